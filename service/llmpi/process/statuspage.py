"""While the launcher pulls the model at first start, llama-server cannot run yet (it has no model to load), so
this answers on its port instead: `/health` is 503 with the pull's progress as JSON (`status: "pulling"`), `/` is
the chat page (which shows the progress), and every other route is 503 with Retry-After. It serves files and the
progress only: nothing reaches a model, and it stops before llama-server starts.

One asyncio loop in one thread serves every connection, under the connection limits of llmpi.core.limits (the caps
refuse a connection with 503 as it is accepted; headers within HEADER_TIMEOUT; a declared body over LLMPI_MAX_BODY
is a 413). It reads no body at all, and closes each connection after its answer.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core import limits
from ..core.limits import HTTPError, Limits

RETRY_AFTER = 5
BUSY = {
    "error": {
        "code": 503,
        "message": "too many connections (LLMPI_MAX_CONNECTIONS, LLMPI_MAX_CONNECTIONS_PER_CLIENT); try again shortly",
        "type": "unavailable_error",
    }
}


def health_body(progress: dict[str, Any]) -> dict[str, Any]:
    pct = progress.get("percent")
    message = f"downloading the model {progress.get('model', '')}: {pct if pct is not None else 0:.1f}%"
    return {
        "status": "pulling",
        "error": {"code": 503, "message": message, "type": "unavailable_error"},
        "pull": progress,
    }


class StatusPage:
    """The status page on (host, port), for the duration of a `with` block: the port is bound at construction (a port
    in use is an error there), served by one thread from `__enter__` to `__exit__`."""

    def __init__(self, host: str, port: int, page: Path, progress: Callable[[], dict[str, Any]], lim: Limits) -> None:
        self.page, self.progress, self.limits = page, progress, lim
        self._sock = limits.bind(host, port)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    def __enter__(self) -> StatusPage:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._sock.close()

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        busy = limits.json_reply(503, BUSY, limits.RETRY_AFTER)
        caps = limits.Caps(self.limits)
        server = await limits.start_server(self.connection, self._sock, caps, busy)
        self._ready.set()
        await self._stop.wait()
        server.close()  # no new connection; those still open end here, before llama-server takes the port
        caps.close_all()

    def answer(self, method: str, target: str) -> bytes:
        path = target.split("?", 1)[0]
        head_only = method == "HEAD"
        if method in ("GET", "HEAD") and path in ("/", "/index.html") and self.page.is_file():
            return limits.reply(200, self.page.read_bytes(), "text/html; charset=utf-8", head_only=head_only)
        body = health_body(self.progress())
        if path not in ("/health", "/v1/health"):
            body = {"error": {**body["error"], "message": body["error"]["message"] + "; try again later"}}
        return limits.reply(503, json.dumps(body).encode(), retry_after=RETRY_AFTER, head_only=head_only)

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request and its answer; a body, if one is declared, is never read."""
        lingering = True
        try:
            try:
                lines = await limits.read_head(reader, fresh=True)
                if lines is None:
                    return
                parts = lines[0].split(" ")
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    raise HTTPError(400, "not an HTTP/1.x request line")
                lingering = limits.declared_length(limits.parse_headers(lines[1:]), self.limits.max_body) != 0
                out = self.answer(parts[0].upper(), parts[1])
            except HTTPError as e:
                error = {"code": e.status, "message": str(e), "type": "invalid_request_error"}
                out = limits.json_reply(e.status, {"error": error})
            writer.write(out)
            if lingering:
                await limits.linger_close(reader, writer)
            else:
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
