"""scripts/bench's speed scenarios (issue 15): what a user waits for, beyond raw throughput.

  * multi-turn: several users continuing their own conversations, requests round-robin; time to first token of
    each turn and how much of its prompt the server took from its cache (llama-server's own `timings.cache_n`);
  * rag: answers that quote the passages in the prompt (scripts/clients/rag.py's notes and prompt), greedy;
    generation speed and the text itself, to compare speculation on and off;
  * growth: time to first token for prompts of 128 ... 8,192 tokens, and generation speed at that depth.

Each function sends a bounded number of requests to one server and returns plain data for the bench's record.
The texts are made from a fixed word list with a fixed seed, so every run and every server gets the same prompts.
"""

from __future__ import annotations

import json
import random
import statistics
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib import ROOT, sse

NOTES = ROOT / "scripts" / "clients" / "docs"
# scripts/clients/rag.py's system prompt, the notes in place of what its retrieval picked
RAG_SYSTEM = (
    "Answer the question from the notes below. If they do not say, say that you do not know.\n\nNotes:\n{notes}"
)
_WORD_LIST = (
    "the a house garden kitchen light window morning evening river road town market bread water tea coffee child "
    "mother father friend neighbour dog cat bird tree flower rain sun wind winter summer spring autumn book letter "
    "story song music table chair door key phone clock bicycle car train bus school work office shop street park "
    "hill field farm apple pear honey cheese soup salt sugar milk egg butter old new small large quiet loud warm "
    "cold early late bright dark happy tired busy slow quick long short green blue red yellow white black "
    "walks opens closes finds keeps reads writes sings cooks bakes carries brings sends waits listens watches "
    "remembers forgets builds paints mends cleans sells buys grows plants picks counts asks answers laughs sleeps "
    "and but so because while after before when then again always never often sometimes today tomorrow yesterday "
    "in on under over near behind beside through across with without for from to of at by"
)
WORDS = _WORD_LIST.split()


def text_of_words(seed: int, n_words: int) -> str:
    """Sentences of random words from WORDS: the same text for the same seed, on every machine."""
    rng = random.Random(seed)
    sentences, left = [], n_words
    while left > 0:
        k = min(left, rng.randint(6, 14))
        words = [rng.choice(WORDS) for _ in range(k)]
        sentences.append(" ".join(words).capitalize() + ".")
        left -= k
    return " ".join(sentences)


def chat(
    base: str,
    key: str | None,
    messages: Sequence[dict[str, str]],
    max_tokens: int,
    temperature: float = 0.0,
    seed: int = 1,
    ban_end: bool = False,
    cache_prompt: bool = True,
) -> dict[str, Any]:
    """One streamed chat completion: time to first token (ms, at the client), the text, and the server's timings
    from its last chunk (prompt_n, cache_n, predicted_per_second, draft_n, draft_n_accepted, ...)."""
    body: dict[str, Any] = {
        "model": "bench",
        "messages": list(messages),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "stream": True,
        "cache_prompt": cache_prompt,  # false: llama-server processes the whole prompt again, as with no reuse
    }
    if ban_end:
        body["logit_bias"] = {"1": -100, "106": -100}  # Gemma 3: <eos>, <end_of_turn>
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(), headers=headers)
    start = time.perf_counter()
    first = 0.0
    parts: list[str] = []
    timings: dict[str, Any] = {}
    with urllib.request.urlopen(req, timeout=600) as r:
        for chunk in sse.events(r):
            timings = chunk.get("timings") or timings
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    parts.append(piece)
    return {"ttft_ms": ((first or time.perf_counter()) - start) * 1000, "text": "".join(parts), "timings": timings}


# --- multi-turn ------------------------------------------------------------------------------------------------


def multi_turn(
    base: str,
    key: str | None,
    users: int = 8,
    turns: int = 6,
    words_per_turn: int = 190,
    reply_tokens: int = 64,
    cache_prompt: bool = True,
) -> dict[str, Any]:
    """`users` conversations of `turns` turns each, one request at a time, round-robin over the users (user 1's
    turn 1, user 2's turn 1, ... user 1's turn 2, ...). Each turn adds a message of `words_per_turn` words and
    the reply (up to `reply_tokens`), so histories grow by about 320 tokens a turn (the 6th prompt: ~1,900
    tokens with the embedded model's tokenizer)."""
    histories: list[list[dict[str, str]]] = [
        [{"role": "system", "content": f"You are the household assistant. This is conversation {u + 1}."}]
        for u in range(users)
    ]
    rows: list[dict[str, Any]] = []
    for turn in range(turns):
        for u in range(users):
            note = text_of_words(1000 * u + turn, words_per_turn)
            histories[u].append({"role": "user", "content": f"My note for today: {note} What do you make of it?"})
            r = chat(base, key, histories[u], reply_tokens, cache_prompt=cache_prompt)
            histories[u].append({"role": "assistant", "content": r["text"]})
            t = r["timings"]
            rows.append(
                {
                    "user": u + 1,
                    "turn": turn + 1,
                    "ttft_ms": round(r["ttft_ms"], 1),
                    "prompt_tokens": int(t.get("prompt_n", 0)) + int(t.get("cache_n", 0)),
                    "cached_tokens": int(t.get("cache_n", 0)),
                }
            )
    later = [row for row in rows if row["turn"] >= 2]
    return {
        "users": users,
        "turns": turns,
        "median_ttft_ms_turn1": round(statistics.median(r["ttft_ms"] for r in rows if r["turn"] == 1), 1),
        "median_ttft_ms_turns_2_on": round(statistics.median(r["ttft_ms"] for r in later), 1),
        "cached_share_turns_2_on": round(
            sum(r["cached_tokens"] for r in later) / max(1, sum(r["prompt_tokens"] for r in later)), 3
        ),
        "largest_prompt_tokens": max(r["prompt_tokens"] for r in rows),
        "rows": rows,
    }


# --- RAG-like --------------------------------------------------------------------------------------------------


def rag_messages(topic: str) -> list[dict[str, str]]:
    """All the notes in the system prompt (as rag.py puts the retrieved ones), a request to quote one, and the start
    of the answer (the embedded model is a base model: it continues a text rather than follows an instruction)."""
    notes = "\n\n".join(p.read_text().strip() for p in sorted(NOTES.glob("*.md")))
    return [
        {"role": "system", "content": RAG_SYSTEM.format(notes=notes)},
        {"role": "user", "content": f"Quote the note about {topic}, word for word."},
        {"role": "assistant", "content": f"The note about {topic}, word for word:\n\n"},
    ]


def rag(base: str, key: str | None, n_notes: int = 6, tokens: int = 128) -> dict[str, Any]:
    """One greedy answer for each of the first `n_notes` notes (every request another one: n-gram speculation
    remembers a slot's earlier answers, and a repeated request would flatter it): the median generation speed (the
    server's own predicted_per_second), the drafts, and the texts (to compare with another server's)."""
    speeds: list[float] = []
    texts: list[str] = []
    drafted = accepted = 0
    for note in sorted(NOTES.glob("*.md"))[:n_notes]:
        r = chat(base, key, rag_messages(note.stem), tokens)
        t = r["timings"]
        speeds.append(float(t.get("predicted_per_second", 0.0)))
        texts.append(r["text"])
        drafted += int(t.get("draft_n", 0))
        accepted += int(t.get("draft_n_accepted", 0))
    return {"gen_tps": round(statistics.median(speeds), 2), "drafted": drafted, "accepted": accepted, "texts": texts}


def same_count(a: Sequence[str], b: Sequence[str]) -> int:
    """How many answers are the same text on both."""
    return sum(x == y for x, y in zip(a, b, strict=True))


# --- growth ----------------------------------------------------------------------------------------------------


def growth(
    base: str, key: str | None, sizes: Sequence[int] = (128, 256, 512, 1024, 2048, 4096, 8192), gen_tokens: int = 32
) -> list[dict[str, Any]]:
    """For each prompt size (tokens, about: words are counted, the server reports the real number), a fresh
    prompt: time to first token, prompt tokens/s, and the generation speed right after it (that deep in the
    context)."""
    rows = []
    for i, size in enumerate(sizes):
        text = text_of_words(50_000 + i, max(8, int(size * 0.89)))  # about 1.12 tokens a word with this list
        r = chat(base, key, [{"role": "user", "content": text}], gen_tokens, ban_end=True)
        t = r["timings"]
        rows.append(
            {
                "target_tokens": size,
                "prompt_tokens": int(t.get("prompt_n", 0)) + int(t.get("cache_n", 0)),
                "ttft_ms": round(r["ttft_ms"], 1),
                "prompt_tps": round(float(t.get("prompt_per_second", 0.0)), 1),
                "gen_tps": round(float(t.get("predicted_per_second", 0.0)), 2),
            }
        )
    return rows


def plot_growth(rows: Sequence[dict[str, Any]], path: Path, title: str) -> bool:
    """A PNG of time to first token and generation speed against the prompt's size; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    x = [r["prompt_tokens"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(x, [r["ttft_ms"] / 1000 for r in rows], marker="o")
    a.set_xscale("log", base=2)
    a.set_xticks(x, [str(v) for v in x], rotation=45)
    a.set_xlabel("prompt tokens")
    a.set_ylabel("time to first token, s")
    a.grid(True, alpha=0.3)
    b.plot(x, [r["gen_tps"] for r in rows], marker="o", color="tab:orange")
    b.set_xscale("log", base=2)
    b.set_xticks(x, [str(v) for v in x], rotation=45)
    b.set_xlabel("tokens already in the context")
    b.set_ylabel("generation, tokens/s")
    b.set_ylim(bottom=0)
    b.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
