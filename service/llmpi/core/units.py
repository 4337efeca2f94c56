"""Sizes in bytes: the units, reading them from settings, writing them for people."""

from __future__ import annotations

import re

MiB = 1024 * 1024
GiB = 1024 * MiB

# what Settings checks LLMPI_* against and the fit (llmpi.plan.fit) plans with
DEFAULT_RESERVE = 256 * MiB  # left to the OS and everything else in the container/board
MIN_CONTEXT = 512  # the smallest context a slot is given

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'8G', '8GiB', '512M', '4096' (bytes) -> bytes. Units are binary (a Pi's '8 GB' is 8 GiB of RAM)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 8G, 512M or a number of bytes)")
    scale = {"": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024 * GiB}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def fmt_bytes(n: float) -> str:
    if abs(n) >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.0f} MiB"
