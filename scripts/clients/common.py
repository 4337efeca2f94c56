"""What the client programs share: where the appliance is, and which of its models to use.

The programs read the OpenAI SDK's own variables, so code written for OpenAI needs no change beyond them:
  OPENAI_BASE_URL=http://<pi>:8080/v1   OPENAI_API_KEY=<the appliance's key>
"""

from __future__ import annotations

import argparse
import os
import sys

import openai


def arguments(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://localhost:8080/v1"))
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    p.add_argument(
        "--model", default=os.environ.get("LLMPI_CHAT_MODEL", ""), help="chat model id (default: the served one)"
    )
    return p


def client(args: argparse.Namespace) -> openai.OpenAI:
    if not args.api_key:
        sys.exit(
            "set OPENAI_API_KEY (or --api-key) to the appliance's key: docker compose exec llmpi cat /data/api_key"
        )
    return openai.OpenAI(base_url=args.base_url, api_key=args.api_key, timeout=600)


def is_embedding_model(entry: object) -> bool:
    """In router mode llama-server lists each model's command line; an embedding model's has --embeddings (the
    chat page tells them apart the same way). With one model there is nothing to tell apart."""
    extra = getattr(entry, "model_extra", None) or {}
    return "--embeddings" in ((extra.get("status") or {}).get("args") or [])


def pick_model(c: openai.OpenAI, wanted: str, embedding: bool) -> str:
    """The model id to use: `wanted` if given, else the first served model of the right kind."""
    if wanted:
        return wanted
    models = list(c.models.list())
    for m in models:
        if is_embedding_model(m) == embedding:
            return m.id
    if not embedding and len(models) == 1:
        return models[0].id
    kind = "embedding" if embedding else "chat"
    sys.exit(f"the appliance serves no {kind} model ({', '.join(m.id for m in models)}); see README: Embeddings")


def fail(e: openai.APIError) -> None:
    """Print what the server said (e.g. the 400 for an image sent to a text-only model) and exit non-zero."""
    message = e.message if isinstance(e, openai.APIStatusError) else str(e)
    sys.exit(f"error from the appliance: {message}")
