#!/usr/bin/env python3
"""The recipe's listing 11.3 for today's APIs: retrieval-augmented chat over a folder of notes.

Passages are embedded by the appliance's own embedding model (/v1/embeddings, through LangChain's
OpenAIEmbeddings), indexed with FAISS, and the best ones go into the prompt of the appliance's chat model
(LangChain's ChatOpenAI). The chat history is trimmed to fit the served model's context, counting tokens with
that model's own tokenizer (llama-server's /apply-template and /tokenize), not tiktoken's GPT counts.

  OPENAI_BASE_URL=http://<pi>:8080/v1 OPENAI_API_KEY=<key> \
    python3 scripts/clients/rag.py "What is the guest Wi-Fi password?"
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import openai
from common import arguments, client, fail, pick_model
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

DOCS = Path(__file__).resolve().parent / "docs"
SYSTEM = "Answer the question from the notes below. If they do not say, say that you do not know.\n\nNotes:\n{notes}"


@dataclass
class Passage:
    source: str
    text: str


def passages(folder: Path) -> list[Passage]:
    """Each paragraph of each note (.md or .txt) is one passage."""
    out = []
    for path in sorted(folder.glob("*.md")) + sorted(folder.glob("*.txt")):
        for i, para in enumerate(p.strip() for p in path.read_text().split("\n\n")):
            if para and not para.startswith("#"):
                out.append(Passage(f"{path.name}#{i}", para))
    return out


class Index:
    """A FAISS inner-product index over normalized embeddings: cosine similarity."""

    def __init__(self, embedder: OpenAIEmbeddings, items: list[Passage]) -> None:
        self.embedder, self.items = embedder, items
        vectors = np.array(embedder.embed_documents([p.text for p in items]), dtype="float32")
        faiss.normalize_L2(vectors)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def search(self, query: str, k: int) -> list[tuple[Passage, float]]:
        q = np.array([self.embedder.embed_query(query)], dtype="float32")
        faiss.normalize_L2(q)
        scores, ids = self.index.search(q, min(k, len(self.items)))
        return [(self.items[i], float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]


class Tokens:
    """Counts a chat's prompt tokens exactly as the served model will: its template, then its tokenizer."""

    def __init__(self, base_url: str, api_key: str, model: str) -> None:
        self.http = httpx.Client(base_url=base_url.removesuffix("/").removesuffix("/v1"), timeout=120)
        self.http.headers["Authorization"] = f"Bearer {api_key}"
        self.model = model

    def n_ctx(self) -> int:
        """The context one request may use (llama-server's per-slot context)."""
        r = self.http.get("/props", params={"model": self.model})
        r.raise_for_status()
        return int(r.json()["default_generation_settings"]["n_ctx"])

    def count(self, messages: list[dict[str, str]]) -> int:
        r = self.http.post("/apply-template", json={"model": self.model, "messages": messages})
        r.raise_for_status()
        prompt = r.json()["prompt"]
        r = self.http.post(
            "/tokenize", json={"model": self.model, "content": prompt, "add_special": True, "parse_special": True}
        )
        r.raise_for_status()
        return len(r.json()["tokens"])


def as_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    return [{"role": roles[m.type], "content": str(m.content)} for m in messages]


def trim(
    system: SystemMessage, history: list[BaseMessage], question: HumanMessage, tokens: Tokens, budget: int
) -> tuple[list[BaseMessage], int]:
    """Drop the oldest turns (a question with its answer) until the prompt fits the budget; the system message
    and the new question always stay. Returns the messages and their counted prompt tokens."""
    kept = list(history)
    while True:
        messages = [system, *kept, question]
        n = tokens.count(as_dicts(messages))
        if n <= budget or not kept:
            return messages, n
        kept = kept[2:] if len(kept) >= 2 else []


def load_history(path: Path | None) -> list[BaseMessage]:
    if path is None:
        return []
    turns: list[dict[str, Any]] = json.loads(path.read_text())
    return [HumanMessage(t["content"]) if t["role"] == "user" else AIMessage(t["content"]) for t in turns]


def main() -> None:
    p = arguments(__doc__ or "")
    p.add_argument("question")
    p.add_argument("--docs", type=Path, default=DOCS, help="folder of .md/.txt notes (default: the shipped examples)")
    p.add_argument("--embedding-model", default="", help="embedding model id (default: the served one)")
    p.add_argument("--history", type=Path, help="earlier turns, a JSON list of {role, content}")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print one JSON record instead of text")
    args = p.parse_args()
    c = client(args)
    try:
        chat_model = pick_model(c, args.model, embedding=False)
        embedding_model = pick_model(c, args.embedding_model, embedding=True)
        # check_embedding_ctx_length=False: send the text itself; LangChain would otherwise tokenize it with
        # tiktoken (OpenAI's tokenizer, downloaded at first use), which is not the served model's
        embedder = OpenAIEmbeddings(
            model=embedding_model, base_url=args.base_url, api_key=args.api_key, check_embedding_ctx_length=False
        )
        index = Index(embedder, passages(args.docs))
        hits = index.search(args.question, args.top_k)
        system = SystemMessage(SYSTEM.format(notes="\n\n".join(h.text for h, _ in hits)))
        tokens = Tokens(args.base_url, args.api_key, chat_model)
        n_ctx = tokens.n_ctx()
        history = load_history(args.history)
        messages, counted = trim(system, history, HumanMessage(args.question), tokens, n_ctx - args.max_tokens)
        llm = ChatOpenAI(
            model=chat_model,
            base_url=args.base_url,
            api_key=args.api_key,
            max_completion_tokens=args.max_tokens,
            temperature=0,
        )
        reply = llm.invoke(messages)
    except (openai.APIError, httpx.HTTPError) as e:
        if isinstance(e, openai.APIError):
            fail(e)
        sys.exit(f"error from the appliance: {e}")
    usage: dict[str, Any] = dict(reply.usage_metadata or {})
    record = {
        "question": args.question,
        "retrieved": [{"source": h.source, "score": round(s, 4)} for h, s in hits],
        "n_ctx": n_ctx,
        "history_turns": len(history),
        "kept_turns": len(messages) - 2,
        "prompt_tokens_counted": counted,
        "prompt_tokens_served": usage.get("input_tokens"),
        "answer": str(reply.content),
        "models": {"chat": chat_model, "embedding": embedding_model},
    }
    if args.json:
        print(json.dumps(record))
        return
    for h, s in hits:
        print(f"[{s:.2f}] {h.source}: {h.text[:80]}...", file=sys.stderr)
    if record["kept_turns"] < len(history):
        print(
            f"[history trimmed: kept {record['kept_turns']} of {len(history)} messages to fit {n_ctx} tokens]",
            file=sys.stderr,
        )
    print(record["answer"])


if __name__ == "__main__":
    main()
