"""The usage ledger, `/data/usage.json`, as llama-server writes it (patch 0027, under an flock of `usage.json.lock`,
replaced whole by a rename, so a reader never sees half of it):

    {"since": <epoch s>, "keys": {"phone": {"total": COUNTERS, "days": {"2026-12-07": COUNTERS, ...},
                                             "hour": "2026-12-07T08", "hour_tokens": N}}}

COUNTERS: requests, errors, prompt_tokens, completion_tokens, queue_seconds, slot_seconds. Days are the container's
local days (TZ; UTC unless set), the newest 35 kept. A key is known by its name, never by itself.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..core.env import ConfigError

WEEK_DAYS = 7


@dataclass(frozen=True)
class Counters:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_seconds: float = 0.0
    slot_seconds: float = 0.0

    @classmethod
    def of(cls, raw: Any) -> Counters:
        if not isinstance(raw, Mapping):
            return cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            v = raw.get(f.name, 0)
            values[f.name] = (float(v) if f.type == "float" else int(v)) if isinstance(v, (int, float)) else 0
        return cls(**values)

    def __add__(self, other: Counters) -> Counters:
        return Counters(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class KeyUsage:
    name: str
    today: Counters
    week: Counters  # today and the six days before it
    total: Counters  # since the ledger began


@dataclass(frozen=True)
class Ledger:
    since: dt.datetime | None
    keys: tuple[KeyUsage, ...]


def read(path: Path) -> dict[str, Any]:
    """The ledger's JSON; an empty one when there is none yet (no request was answered)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read the usage ledger {path}: {e.strerror}") from None
    try:
        raw = json.loads(text)
    except ValueError:
        raise ConfigError(f"the usage ledger {path} is damaged (not JSON); llama-server starts it again") from None
    return raw if isinstance(raw, dict) else {}


def summarize(raw: Mapping[str, Any], today: dt.date) -> Ledger:
    """Per key: today, this week (today and the six days before), since the ledger began; keys by name."""
    week = {(today - dt.timedelta(days=i)).isoformat() for i in range(WEEK_DAYS)}
    entries = raw.get("keys") if isinstance(raw.get("keys"), Mapping) else {}
    assert isinstance(entries, Mapping)
    out = []
    for name in sorted(entries):
        entry = entries[name] if isinstance(entries[name], Mapping) else {}
        days = entry.get("days") if isinstance(entry.get("days"), Mapping) else {}
        assert isinstance(days, Mapping)
        out.append(
            KeyUsage(
                name=str(name),
                today=Counters.of(days.get(today.isoformat())),
                week=sum((Counters.of(v) for d, v in days.items() if d in week), Counters()),
                total=Counters.of(entry.get("total")),
            )
        )
    since = raw.get("since")
    start = dt.datetime.fromtimestamp(since).astimezone() if isinstance(since, (int, float)) else None
    return Ledger(start, tuple(out))


def table(ledger: Ledger) -> str:
    """`llmpi keys usage`: one line a key, tokens in/out and requests for today, this week and since the start."""
    if not ledger.keys:
        return "no request has been answered yet: the usage ledger is empty"
    since = ledger.since.strftime("%Y-%m-%d") if ledger.since else "the start"
    head = ("key", "today in/out (requests)", "this week in/out (requests)", f"since {since} in/out (requests)")
    rows = [head] + [(k.name, cell(k.today), cell(k.week), cell(k.total)) for k in ledger.keys]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    extra = [k for k in ledger.keys if k.total.errors or k.total.queue_seconds >= 0.05]
    lines += [detail(k) for k in extra]
    return "\n".join(lines)


def cell(c: Counters) -> str:
    return f"{c.prompt_tokens}/{c.completion_tokens} ({c.requests})"


def detail(k: KeyUsage) -> str:
    t = k.total
    return (
        f"{k.name}: {t.errors} error(s), {t.queue_seconds:.1f} s waiting for a slot, {t.slot_seconds:.1f} s in slots "
        "since the start"
    )


def as_json(ledger: Ledger) -> dict[str, Any]:
    """`llmpi keys usage --json`."""

    def counters(c: Counters) -> dict[str, Any]:
        return {f.name: getattr(c, f.name) for f in fields(c)}

    keys = {k.name: {"today": counters(k.today), "week": counters(k.week), "total": counters(k.total)}
            for k in ledger.keys}  # fmt: skip
    return {"since": ledger.since.isoformat() if ledger.since else None, "keys": keys}
