"""Comparing greedy (temperature 0) texts from two servers, where llama.cpp's own arithmetic allows a difference.

llama.cpp's CPU kernels round differently when they evaluate one token or several together (a prompt, a batch of
slots, a speculative draft being verified). Where the two best next tokens are within rounding of each other, the
pick can flip; the texts then part there. docs/speed.md shows this between two identical requests to one server
without speculation (the second one's prompt comes from the cache). So "the same greedy text" is checked as: the
same text, or texts that part where the reference's two best tokens are within NEAR_TIE of each other.
"""

from __future__ import annotations

from typing import Any

NEAR_TIE = 0.1  # nats between the two best tokens' log-probabilities


def first_difference(a: str, b: str) -> int | None:
    """The first character index where the texts differ (the shorter one's length if one is a prefix), or None."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def gap_at(logprobs: list[dict[str, Any]], index: int) -> float:
    """The log-probability gap between the two best tokens where the reference text's character `index` is
    (OpenAI's chat logprobs.content with top_logprobs of at least 2)."""
    start = 0
    for entry in logprobs:
        end = start + len(entry["token"])
        if index < end:
            top = sorted((t["logprob"] for t in entry["top_logprobs"]), reverse=True)
            return float(top[0] - top[1])
        start = end
    raise AssertionError(f"character {index} is past the reference's {start} characters")


def assert_same_or_near_tie(text: str, reference: str, logprobs: list[dict[str, Any]], what: str) -> bool:
    """True when identical; when not, assert that they part at a near-tie of the reference's and return False."""
    i = first_difference(text, reference)
    if i is None:
        return True
    gap = gap_at(logprobs, i)
    assert gap < NEAR_TIE, (
        f"{what}: the texts part at character {i} where the reference's best token led by {gap:.4f} nats: "
        f"{reference[max(0, i - 40) : i + 40]!r} / {text[max(0, i - 40) : i + 40]!r}"
    )
    return False
