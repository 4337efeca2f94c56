"""The health check waits while the model loads and fails at once on a refusal or a server that refuses work."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmpi import healthcheck, markers
from llmpi.config import config_error_marker, runtime_dir

pytestmark = pytest.mark.unit


class Server:
    def __init__(self) -> None:
        self.answer = (503, b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}')
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = outer.answer
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path / "run"))
    s = Server()
    monkeypatch.setenv("LLMPI_PORT", str(s.port))
    monkeypatch.delenv("LLAMA_ARG_PORT", raising=False)
    yield s
    s.httpd.shutdown()


def test_waits_while_loading_then_healthy(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    runtime_dir()
    Path(markers.start_attempts_path()).write_text("2")
    threading.Timer(1.5, lambda: setattr(server, "answer", (200, b'{"status":"ok"}'))).start()
    t = time.monotonic()
    assert healthcheck.main(wait=30) == 0
    assert time.monotonic() - t >= 1.4
    assert not Path(markers.start_attempts_path()).exists()  # it served: attempts start again from zero


def test_loading_too_long_fails_with_what_it_saw(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(wait=1) == 1
    assert "still starting after 1 s" in capsys.readouterr().out


def test_a_refusal_fails_at_once(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    config_error_marker().write_text("LLMPI_PARALLEL='many' is not a whole number\n")
    t = time.monotonic()
    assert healthcheck.main(wait=30) == 1
    assert time.monotonic() - t < 2
    assert "llmpi refused to start: LLMPI_PARALLEL='many'" in capsys.readouterr().out


def test_a_draining_server_fails_at_once(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    server.answer = (503, b'{"error":{"code":503,"message":"the server is shutting down"}}')
    assert healthcheck.main(wait=30) == 1
    assert "shutting down" in capsys.readouterr().out


def test_nothing_listening_yet_is_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path / "run"))
    state, seen = healthcheck.probe("http://127.0.0.1:9")  # the discard port: nothing listens there
    assert state == "starting", seen
