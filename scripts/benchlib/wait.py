"""Waiting for facts: one poll loop with a timeout and a message that says what was awaited, and the HTTP status
check most waits poll. Standard library only, so that a script run with any python3 can use it."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping


def wait_for(
    check: Callable[[], bool],
    timeout: float,
    pause: float = 0.25,
    what: str = "condition",
    *,
    alive: Callable[[], bool] | None = None,
    detail: Callable[[], str] | None = None,
) -> float:
    """Call `check` every `pause` seconds until it returns true; return the seconds that took.

    A check that raises OSError (a refused connection; `urllib`'s and `requests`' errors are OSErrors) counts as
    false. After `timeout` seconds: TimeoutError. As soon as `alive` returns false (the process or container being
    waited for has stopped): RuntimeError. Both messages name `what` and end with `detail()` (a log tail, say)."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except OSError:
            pass
        if alive is not None and not alive():
            raise RuntimeError(_message(f"{what}: stopped before the wait was over", detail))
        if time.monotonic() - start >= timeout:
            raise TimeoutError(_message(f"timed out after {timeout:.0f}s waiting for {what}", detail))
        time.sleep(pause)


def _message(text: str, detail: Callable[[], str] | None) -> str:
    return f"{text}:\n{detail()}" if detail is not None else text


def http_status(url: str, headers: Mapping[str, str] | None = None, timeout: float = 5) -> int:
    """The status of a GET on `url` (4xx and 5xx included); OSError when nothing answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers or {})), timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def wait_ok(
    url: str,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    pause: float = 0.05,
    *,
    alive: Callable[[], bool] | None = None,
    detail: Callable[[], str] | None = None,
) -> float:
    """Seconds until a GET on `url` answers 200 (llama-server's `/health` does once its model is loaded)."""
    return wait_for(
        lambda: http_status(url, headers, timeout=2) == 200, timeout, pause, f"{url} to answer 200",
        alive=alive, detail=detail,
    )  # fmt: skip
