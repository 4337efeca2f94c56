"""While the launcher pulls the model at first start, llama-server cannot run yet (it has no model to load), so
this answers on its port instead: `/health` is 503 with the pull's progress as JSON (`status: "pulling"`), `/` is
the chat page (which shows the progress), and every other route is 503 with Retry-After. It serves files and the
progress only: nothing reaches a model, and it stops before llama-server starts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RETRY_AFTER = "5"


def health_body(progress: dict[str, Any]) -> dict[str, Any]:
    pct = progress.get("percent")
    message = f"downloading the model {progress.get('model', '')}: {pct if pct is not None else 0:.1f}%"
    return {
        "status": "pulling",
        "error": {"code": 503, "message": message, "type": "unavailable_error"},
        "pull": progress,
    }


def _handler(page: Path, progress: Callable[[], dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "llmpi"
        sys_version = ""

        def log_message(self, *args: Any) -> None:  # the launcher logs the progress itself
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if status == 503:
                self.send_header("Retry-After", RETRY_AFTER)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _busy(self) -> None:
            body = health_body(progress())
            path = self.path.split("?", 1)[0]
            if path not in ("/health", "/v1/health"):
                body = {"error": {**body["error"], "message": body["error"]["message"] + "; try again later"}}
            self._send(503, json.dumps(body).encode(), "application/json; charset=utf-8")

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] in ("/", "/index.html") and page.is_file():
                self._send(200, page.read_bytes(), "text/html; charset=utf-8")
            else:
                self._busy()

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_POST(self) -> None:
            self.close_connection = True  # the body is not read
            self._busy()

        do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_POST

    return Handler


class StatusPage:
    """A small threaded HTTP server on (host, port), for the duration of a `with` block."""

    def __init__(self, host: str, port: int, page: Path, progress: Callable[[], dict[str, Any]]) -> None:
        self._server = ThreadingHTTPServer((host, port), _handler(page, progress))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StatusPage:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
