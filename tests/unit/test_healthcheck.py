"""The health check waits while the model loads and fails at once on a refusal or a server that refuses work."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmpi.core import paths
from llmpi.process import healthcheck

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


class Clock:
    """The health check's time: a monotonic clock that only sleep() moves, without waiting; `on_sleep` runs after
    each sleep with the number of sleeps so far (what the server answers next can change there)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[int], None] = lambda n: None

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(len(self.sleeps))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path / "run"))
    s = Server()
    monkeypatch.setenv("LLMPI_PORT", str(s.port))
    monkeypatch.setenv("LLMPI_OLLAMA_PORT", "off")
    monkeypatch.delenv("LLAMA_ARG_PORT", raising=False)
    yield s
    s.httpd.shutdown()


def test_waits_while_loading_then_healthy(server: Server, clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    Path(paths.make_runtime_dir())
    Path(paths.runtime_file(paths.START_ATTEMPTS)).write_text("2")

    def loaded_after_two_looks(sleeps: int) -> None:
        if sleeps == 2:
            server.answer = (200, b'{"status":"ok"}')

    clock.on_sleep = loaded_after_two_looks
    assert healthcheck.main(wait=30, sleep=clock.sleep, clock=clock.monotonic) == 0
    assert clock.sleeps == [1, 1]  # two looks at "loading", a second apart, then the 200
    assert capsys.readouterr().out == f"http://127.0.0.1:{server.port}/health: 200\n"
    assert not Path(paths.runtime_file(paths.START_ATTEMPTS)).exists()  # it served: attempts start again from zero


def test_loading_too_long_fails_with_what_it_saw(
    server: Server, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    assert healthcheck.main(wait=3, sleep=clock.sleep, clock=clock.monotonic) == 1
    assert clock.sleeps == [1, 1, 1]  # a look a second until the 3 s are over, then one last look
    out = capsys.readouterr().out
    assert out == f"still starting after 3 s: http://127.0.0.1:{server.port}/health: 503 (loading the model)\n"


def test_a_refusal_fails_at_once(server: Server, clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    paths.make_runtime_dir()
    Path(paths.runtime_file(paths.CONFIG_ERROR)).write_text("LLMPI_PARALLEL='many' is not a whole number\n")
    assert healthcheck.main(wait=30, sleep=clock.sleep, clock=clock.monotonic) == 1
    assert clock.sleeps == []  # no second look
    assert "llmpi refused to start: LLMPI_PARALLEL='many'" in capsys.readouterr().out


def test_the_ollama_door_must_answer_when_it_is_on(
    server: Server, clock: Clock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server.answer = (200, b'{"status":"ok"}')
    monkeypatch.setenv("LLMPI_OLLAMA_PORT", "9")  # the discard port: nothing listens there
    assert healthcheck.main(wait=30, sleep=clock.sleep, clock=clock.monotonic) == 1
    assert "the Ollama API (port 9) does not answer" in capsys.readouterr().out
    with socket.create_server(("127.0.0.1", 0)) as door:  # something that takes connections
        monkeypatch.setenv("LLMPI_OLLAMA_PORT", str(door.getsockname()[1]))
        assert healthcheck.main(wait=30, sleep=clock.sleep, clock=clock.monotonic) == 0


def test_a_draining_server_fails_at_once(server: Server, clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    server.answer = (503, b'{"error":{"code":503,"message":"the server is shutting down"}}')
    assert healthcheck.main(wait=30, sleep=clock.sleep, clock=clock.monotonic) == 1
    assert clock.sleeps == []
    assert "shutting down" in capsys.readouterr().out


def test_nothing_listening_yet_is_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path / "run"))
    state, seen = healthcheck.probe("http://127.0.0.1:9")  # the discard port: nothing listens there
    assert state == "starting", seen
