#!/usr/bin/env python3
"""The recipe's listing 11.1 with today's openai SDK: ask the appliance a question, stream the answer.

OPENAI_BASE_URL=http://<pi>:8080/v1 OPENAI_API_KEY=<key> python3 scripts/clients/chat.py "Why is the sky blue?"
"""

from __future__ import annotations

import sys
import time

import openai
from common import arguments, client, fail, pick_model


def main() -> None:
    p = arguments(__doc__ or "")
    p.add_argument("question", nargs="?", default="Introduce yourself in one sentence.")
    p.add_argument("--max-tokens", type=int, default=256)
    args = p.parse_args()
    c = client(args)
    try:
        model = pick_model(c, args.model, embedding=False)
        start = time.monotonic()
        first = None
        usage = None
        stream = c.chat.completions.create(
            model=model,
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": args.question},
            ],
            max_tokens=args.max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    first = first or time.monotonic()
                    print(choice.delta.content, end="", flush=True)
    except openai.APIError as e:
        fail(e)
    print()
    if usage is not None:
        elapsed = time.monotonic() - start
        ttft = f"{(first - start) * 1000:.0f} ms" if first else "-"
        print(
            f"[{model}: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
            f"first token after {ttft}, {elapsed:.1f} s in all]",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
