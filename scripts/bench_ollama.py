"""scripts/bench's Ollama scenario: the same chat through the OpenAI door (8080, llama-server itself) and through the
Ollama door (11434, llmpi.ollama translating onto it), interleaved, one stream and four at once: what the door costs
in generation speed and in time to first token (docs/ollama.md, "What it costs").

Both doors get the same request: one user message, greedy, the same token limit, streamed; each door's stream is
read the way its clients read it (server-sent events on 8080, NDJSON lines on 11434), one token a chunk.
"""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from benchlib import sse

PROMPT = "Tell me a long story about a Raspberry Pi that learned to talk. Go on for as long as you can."
Stream = Callable[[str, str, int], dict[str, float]]


def post(url: str, key: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    return urllib.request.urlopen(req, timeout=600)


def timed(chunks: Iterator[str], start: float) -> dict[str, float]:
    """Time to the first text, and generation tokens/s between the first and the last (one token a chunk)."""
    first = last = 0.0
    n = 0
    for text in chunks:
        if not text:
            continue
        now = time.perf_counter()
        n += 1
        first = first or now
        last = now
    gen = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    return {"ttft_ms": (first - start) * 1000, "gen_tps": gen, "tokens": n, "end": last}


def openai_stream(base: str, key: str, tokens: int) -> dict[str, float]:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    with post(f"{base}/v1/chat/completions", key, body) as r:
        texts = (((e.get("choices") or [{}])[0].get("delta") or {}).get("content") or "" for e in sse.events(r))
        return timed(texts, start)


def ollama_stream(base: str, key: str, tokens: int) -> dict[str, float]:
    body = {
        "model": "",
        "messages": [{"role": "user", "content": PROMPT}],
        "options": {"num_predict": tokens, "temperature": 0},
    }
    start = time.perf_counter()
    with post(f"{base}/api/chat", key, {**body, "model": ollama_model(base, key)}) as r:
        texts = ((json.loads(line).get("message") or {}).get("content") or "" for line in r if line.strip())
        return timed(texts, start)


_models: dict[str, str] = {}


def ollama_model(base: str, key: str) -> str:
    """The board's first model, by the name /api/tags gives it (looked up once)."""
    if base not in _models:
        req = urllib.request.Request(f"{base}/api/tags", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            _models[base] = json.load(r)["models"][0]["model"]
    return _models[base]


def at_once(stream: Stream, base: str, key: str, tokens: int, n: int) -> dict[str, float]:
    """n streams at once: their total generation tokens/s (all tokens over the wall time) and each one's median."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        start = time.perf_counter()
        runs = list(pool.map(lambda _: stream(base, key, tokens), range(n)))
    wall = max(r["end"] for r in runs) - start
    return {
        "aggregate_tps": sum(r["tokens"] for r in runs) / wall,
        "stream_tps": statistics.median(r["gen_tps"] for r in runs),
        "ttft_ms": statistics.median(r["ttft_ms"] for r in runs),
    }


def compare(
    base: str, ollama_base: str, key: str, tokens: int, rounds: int, streams: tuple[int, ...] = (1, 4)
) -> dict[str, Any]:
    """Both doors, interleaved (8080, 11434, 11434, 8080, ...) so that a machine's drift, and the prompt cache's
    help to whichever comes second, fall on both alike; medians."""
    doors: dict[str, tuple[Stream, str]] = {"openai": (openai_stream, base), "ollama": (ollama_stream, ollama_base)}
    for stream, url in doors.values():
        stream(url, key, 8)  # warm-up
    runs: dict[str, dict[int, list[dict[str, float]]]] = {d: {n: [] for n in streams} for d in doors}
    for i in range(rounds):
        for n in streams:
            # the order alternates (A B, B A, ...): the second of a pair finds its prompt in the slot's cache
            for door in sorted(doors, reverse=bool(i % 2)):
                stream, url = doors[door]
                runs[door][n].append(at_once(stream, url, key, tokens, n))
    out: dict[str, Any] = {}
    for door in doors:
        out[door] = {
            str(n): {k: round(statistics.median(r[k] for r in runs[door][n]), 2) for k in runs[door][n][0]}
            for n in streams
        }
    for label in map(str, streams):
        o, a = out["ollama"][label], out["openai"][label]
        ratio = round(o["stream_tps"] / a["stream_tps"], 3) if a["stream_tps"] else None
        out[f"x{label}_stream_tps_ratio"] = ratio
        out[f"x{label}_aggregate_tps_ratio"] = round(o["aggregate_tps"] / a["aggregate_tps"], 3)
        out[f"x{label}_ttft_diff_ms"] = round(o["ttft_ms"] - a["ttft_ms"], 1)
    out["tokens"], out["rounds"] = tokens, rounds
    return out


def table(result: dict[str, Any]) -> str:
    lines = [f"{'door':<10}{'streams':>8}{'TTFT ms':>10}{'t/s a stream':>14}{'t/s all':>10}"]
    for door in ("openai", "ollama"):
        for n, r in result[door].items():
            lines.append(f"{door:<10}{n:>8}{r['ttft_ms']:>10.1f}{r['stream_tps']:>14.2f}{r['aggregate_tps']:>10.2f}")
    ratios = {k: v for k, v in result.items() if k.startswith("x")}
    lines.append("ollama vs openai: " + json.dumps(ratios))
    return "\n".join(lines)
