"""A pull's progress: the bytes on disk, as a JSON file in the runtime directory (for the status page and `/health`
while the launcher pulls) and a log line every few seconds."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.files import write_atomic


def progress_path() -> Path:
    """The pull's progress, for the status page and `/health` while the launcher pulls (runtime directory)."""
    return Path(paths.runtime_file(paths.PULL_PROGRESS))


def read_progress() -> dict[str, Any] | None:
    """The running pull's last snapshot (Progress.snapshot), or None when no pull is writing one."""
    try:
        data = json.loads(progress_path().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(snap: Mapping[str, Any]) -> str:
    """A pull's snapshot as one line: model, state, file, percent, size, rate and time left (those known)."""
    rate, eta = snap.get("rate_bytes_per_s"), snap.get("eta_s")
    speed = f" at {rate / 1e6:.1f} MB/s" if rate else ""
    left = f", about {max(1, round(eta / 60))} min left" if eta else ""
    return (
        f"pulling {snap.get('model', '')}: {snap.get('state', '')} {snap.get('file', '')} "
        f"{snap.get('percent') or 0.0:.1f}% of {(snap.get('total_bytes') or 0) / 1e9:.2f} GB{speed}{left}"
    )


@dataclass
class Progress:
    """Watches a download's bytes on disk (huggingface_hub's `.incomplete` files and the finished ones) and reports
    them: a JSON file for /health and the page, and a log line every `every` seconds."""

    model: str
    work: Path
    total: int
    say: Callable[[str], object]
    write_file: bool = True
    every: float = 10.0
    state: str = "checking"
    file: str = ""
    sha256: str = ""  # the file's, as the hub lists it
    done_before: int = 0  # bytes of the files already finished
    _stop: threading.Event = field(default_factory=threading.Event)
    _samples: list[tuple[float, int]] = field(default_factory=list)
    _thread: threading.Thread | None = None

    def on_disk(self) -> int:
        if not self.work.exists():
            return self.done_before
        partial = sum(p.stat().st_size for p in self.work.rglob("*.incomplete") if p.is_file())
        return self.done_before + partial

    def snapshot(self) -> dict[str, Any]:
        now, done = time.monotonic(), self.on_disk()
        self._samples = [s for s in self._samples if now - s[0] <= 30] + [(now, done)]
        t0, d0 = self._samples[0]
        rate = (done - d0) / (now - t0) if now - t0 >= 1 else None
        eta = round((self.total - done) / rate) if rate else None
        return {
            "model": self.model,
            "file": self.file,
            "sha256": self.sha256,
            "state": self.state,
            "done_bytes": done,
            "total_bytes": self.total,
            "percent": round(100 * done / self.total, 1) if self.total else 0.0,
            "rate_bytes_per_s": round(rate, 1) if rate is not None else None,
            "eta_s": eta,
        }

    def report(self, log: bool) -> None:
        snap = self.snapshot()
        if self.write_file:
            write_atomic(progress_path(), json.dumps(snap))
        if log:
            self.say(describe(snap))

    def _run(self) -> None:
        last = 0.0
        while not self._stop.wait(1.0):
            log = time.monotonic() - last >= self.every
            self.report(log)
            if log:
                last = time.monotonic()

    def __enter__(self) -> Progress:
        self.report(log=False)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.write_file:
            progress_path().unlink(missing_ok=True)
