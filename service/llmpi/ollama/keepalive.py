"""Ollama's keep_alive, where llama-server's router can honour it: a model asked to stay loaded for a time is
unloaded when that time has passed with no request for it through this door; 0 unloads it after the answer; a
negative one keeps it loaded (the router's memory limit still unloads the least recently used model when another
one needs the room). Requests that give no keep_alive change nothing: the router's own policy holds. With one model
on the board (no router) the model is always loaded, whatever keep_alive says."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from .listing import FOREVER, iso
from .translate import BadRequest

UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def seconds(value: Any) -> float | None:
    """keep_alive as seconds: a number (seconds, as Ollama reads it) or a Go duration ("5m", "1h30m", "-1");
    None when absent; negative = for ever."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRequest('keep_alive must be a duration ("5m"), a number of seconds, 0 or -1')
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        parts = DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * UNITS[u] for n, u in parts)
    raise BadRequest(f'keep_alive {value!r} is not a duration ("5m", "1h"), a number of seconds, 0 or -1')


@dataclass
class KeepAlive:
    """Each model's unload time, and the requests in flight through this door for it."""

    deadlines: dict[str, float | None] = field(default_factory=dict)  # None = keep loaded
    busy: dict[str, int] = field(default_factory=dict)

    def begin(self, model: str) -> None:
        self.busy[model] = self.busy.get(model, 0) + 1

    def end(self, model: str, keep: float | None) -> None:
        self.busy[model] = max(0, self.busy.get(model, 0) - 1)
        self.set(model, keep)

    def set(self, model: str, keep: float | None) -> None:
        """The model's unload time from now (keep in seconds; negative: none; None: unchanged)."""
        if keep is not None:
            self.deadlines[model] = None if keep < 0 else time.monotonic() + keep

    def due(self, now: float | None = None) -> list[str]:
        """The models whose time is up and that no request through this door is using: taken off the list."""
        now = time.monotonic() if now is None else now
        out = [m for m, t in self.deadlines.items() if t is not None and t <= now and not self.busy.get(m)]
        for m in out:
            del self.deadlines[m]
        return out

    def expires_at(self, model: str) -> str:
        t = self.deadlines.get(model)
        return FOREVER if t is None else iso(time.time() + max(0.0, t - time.monotonic()))
