"""When llama-server crashed anyway: whose request it was, and a key whose requests crash it twice within a minute
refused for a while.

llama-server answers the requests in flight and writes its crash record when a fatal signal kills it (patch 0023:
the signal, the time, and for each request in flight its key's fingerprint and when it began); supervisord starts
the launcher again, which reads the record here before anything else. The request that began last is taken for the
one that crashed the server (a request built to crash it does so as soon as it is parsed, while the others in flight
began earlier); the key it came with is named in the log, never shown. A key taken twice within CRASH_WINDOW seconds
is refused for REFUSE_SECONDS: the launcher marks it in llama-server's key file (patch 0024: a 403 that says until
when), and every later rewrite of that file (`llmpi keys add`, the next start) keeps the mark until it expires.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..core import keys, paths
from ..core.files import write_private

CRASH_WINDOW = 60  # seconds: two crashes of one key within this refuse it
REFUSE_SECONDS = 600  # how long a key is refused
KEEP_SECONDS = 600  # crashes remembered


@dataclass(frozen=True)
class InFlight:
    fingerprint: str  # the key's (core.keys.key_fingerprint); "0": no key
    began_ms: int
    streaming: bool  # its answer had begun: the client got an error event at the end of its stream


@dataclass(frozen=True)
class Crash:
    signal: int
    at_ms: int
    in_flight: tuple[InFlight, ...]

    def culprit(self) -> InFlight | None:
        """The request that began last: the one taken for having crashed the server."""
        return max(self.in_flight, key=lambda r: r.began_ms, default=None)


def read_crash_record(path: Path) -> Crash | None:
    """llama-server's crash record (patch 0023), or None when it did not crash (the file is empty or missing)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or not lines[0].startswith("crash "):
        return None
    try:
        _, sig, at = lines[0].split()
        requests = []
        for line in lines[1:]:
            fingerprint, began, state = line.split()
            requests.append(InFlight(fingerprint, int(began), state == "2"))
        return Crash(int(sig), int(at), tuple(requests))
    except ValueError:
        return Crash(0, 0, ())  # a record cut short by the crash itself: a crash, nobody to blame


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def remember(history_path: Path, crash: Crash, now: float) -> list[tuple[float, str]]:
    """The crashes of the last KEEP_SECONDS with this one: (when, the culprit's key fingerprint or "")."""
    try:
        raw = json.loads(history_path.read_text())
        history = [(float(t), str(fp)) for t, fp in raw]
    except (OSError, ValueError, TypeError):
        history = []
    culprit = crash.culprit()
    at = crash.at_ms / 1000 if crash.at_ms else now
    history = [(t, fp) for t, fp in history if now - t <= KEEP_SECONDS] + [(at, culprit.fingerprint if culprit else "")]
    write_private(history_path, json.dumps(history) + "\n")
    return history


def to_refuse(history: list[tuple[float, str]], fingerprint: str) -> bool:
    """The key crashed the server twice within CRASH_WINDOW (a request without a key is never refused this way:
    only key holders get past the key check)."""
    if fingerprint in ("", "0"):
        return False
    times = sorted(t for t, fp in history if fp == fingerprint)
    return any(b - a <= CRASH_WINDOW for a, b in itertools.pairwise(times))


def refuse(fingerprint: str, until: int, now: float) -> None:
    """Add the key to the refused ones (those expired dropped), which core.keys reads."""
    refused = keys.refused_keys(now)
    refused[fingerprint] = until
    write_private(Path(paths.runtime_file(paths.REFUSED_KEYS)), json.dumps(refused) + "\n")


def account_for_last_crash(names: dict[str, str], out: TextIO, now: float | None = None) -> Crash | None:
    """At the launcher's start: if llama-server crashed, say so and whose request it was; refuse a key that did it
    twice within a minute. The record is removed once read, so that no crash is counted twice."""
    now = time.time() if now is None else now
    record = Path(paths.runtime_file(paths.CRASH_RECORD))
    crash = read_crash_record(record)
    if crash is None:
        return None
    os.unlink(record)
    culprit = crash.culprit()
    who = names.get(culprit.fingerprint, "a key not known any more") if culprit else ""
    print(
        f"llmpi: llama-server was killed by {signal_name(crash.signal)} with {len(crash.in_flight)} request(s) in "
        "flight, each answered with an error"
        + (f"; the newest came with {who}" if culprit else "")
        + "; starting it again",
        file=out,
        flush=True,
    )
    history = remember(Path(paths.runtime_file(paths.CRASHES)), crash, now)
    if culprit and to_refuse(history, culprit.fingerprint):
        until = int(now) + REFUSE_SECONDS
        refuse(culprit.fingerprint, until, now)
        print(
            f"llmpi: requests with {who} crashed llama-server twice within {CRASH_WINDOW} s: that key is refused "
            f"for {REFUSE_SECONDS // 60} minutes (until {time.strftime('%H:%M:%S', time.gmtime(until))} UTC)",
            file=out,
            flush=True,
        )
    return crash
