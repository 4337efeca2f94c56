"""The connection limits of the Ollama door and the status page (llmpi.core.limits), against the real servers started
in this process on loopback: the caps refuse at once while others are served, a trickling client is cut off, an
oversize body is refused before it is sent, an idle connection is let go. Loopback counts as a client here
(`count_loopback`); in the container it is the container's own processes, which the per-client cap leaves out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmpi.core import limits
from llmpi.core.limits import Caps, Limits
from llmpi.core.settings import Settings
from llmpi.ollama import door
from llmpi.process.statuspage import StatusPage

pytestmark = pytest.mark.unit

MiB = 1024 * 1024
LIMITS = Limits(max_body=MiB, max_connections=8, max_per_client=3, count_loopback=True)


@contextlib.contextmanager
def door_server(lim: Limits = LIMITS, auth: bool = False) -> Iterator[int]:
    """The Ollama door on a free loopback port, its own event loop in a thread (no llama-server: /api/version and
    the refusals need none). Yields the port."""
    sock = limits.bind("127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    settings = Settings.read({} if auth else {"LLMPI_AUTH": "off"})
    started = threading.Event()
    stop = asyncio.Event()

    async def run() -> None:
        caps = Caps(lim)
        server = await door.start(door.Door(settings, ("127.0.0.1", 9)), sock, caps)
        started.set()
        await stop.wait()
        server.close()
        caps.close_all()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.gather(*others, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield sock.getsockname()[1]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
        sock.close()


@contextlib.contextmanager
def status_server(tmp_path: Path, lim: Limits = LIMITS) -> Iterator[int]:
    page = tmp_path / "index.html"
    page.write_text("<html>pulling</html>")
    with StatusPage("127.0.0.1", 0, page, lambda: {"model": "m", "percent": 12.5}, lim) as server:
        yield server.port


Server = Callable[..., contextlib.AbstractContextManager[int]]


@pytest.fixture(params=["door", "statuspage"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Server:
    """Each test runs against both servers."""
    if request.param == "door":
        return door_server
    return lambda lim=LIMITS: status_server(tmp_path, lim)


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    s.settimeout(5)
    return s


def read_answer(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole answer (the servers give each a Content-Length): status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = s.recv(65536)
        if not more:
            raise ConnectionError(f"closed after {data!r}")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        more = s.recv(65536)
        if not more:
            break
        body += more
    return int(lines[0].split(" ")[1]), headers, body


def closed(s: socket.socket) -> bool:
    """The server closed the connection (after any answer it sent)."""
    try:
        while data := s.recv(65536):
            del data
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


GET = b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n"


def answered(port: int, source: str) -> int:
    """The status of a GET from `source`; 0 when the connection was refused as over a cap."""
    with connect(port, source) as s:
        s.sendall(GET)
        status, _, body = read_answer(s)
        return 0 if b"too many connections" in body else status


def ok_status(server: Server) -> int:
    return 200 if server is door_server else 503  # the status page answers every API route with 503 + progress


def test_one_address_over_its_cap_gets_503_at_once_while_another_is_served(server: Server) -> None:
    with server() as port:
        held = [connect(port) for _ in range(LIMITS.max_per_client)]
        with connect(port) as extra:  # one more from the same address: refused as it is accepted, before it sends
            t0 = time.monotonic()
            status, headers, body = read_answer(extra)
            assert time.monotonic() - t0 < 1.0
            assert status == 503 and headers["retry-after"] == str(limits.RETRY_AFTER)
            assert headers["connection"] == "close" and "too many connections" in json.dumps(json.loads(body))
            assert closed(extra)
        assert answered(port, "127.0.0.2") == ok_status(server)  # another address is served meanwhile
        assert answered(port, "127.0.0.1") == 0
        held.pop().close()
        deadline = time.monotonic() + 5  # the server sees the close soon; then that address has room again
        while (status := answered(port, "127.0.0.1")) == 0:
            assert time.monotonic() < deadline
        assert status == ok_status(server)
        for s in held:
            s.close()


def test_the_total_cap_holds_across_addresses(server: Server) -> None:
    lim = Limits(max_body=MiB, max_connections=4, max_per_client=3, count_loopback=True)
    with server(lim) as port:
        held = [connect(port, f"127.0.0.{2 + i % 2}") for i in range(4)]
        with connect(port, "127.0.0.9") as extra:
            assert read_answer(extra)[0] == 503
        for s in held:
            s.close()


def test_loopback_is_not_counted_against_the_per_client_cap() -> None:
    caps = Caps(Limits(max_body=1, max_connections=5, max_per_client=1))
    assert all(caps.admit("127.0.0.1") for _ in range(3))  # the container's own processes
    assert caps.admit("192.0.2.7") and not caps.admit("192.0.2.7")
    assert caps.admit("::1") and not caps.admit("192.0.2.8")  # the total counts loopback too
    caps.release("192.0.2.7")
    assert caps.by_client == {} and caps.total == 4
    assert limits.client_of(("::ffff:192.0.2.7", 1, 0, 0)) == "192.0.2.7"


def test_a_client_that_trickles_its_headers_is_cut_off(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "HEADER_TIMEOUT", 1.0)
    with server() as port, connect(port) as s:
        t0 = time.monotonic()
        line = b"GET /api/version HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        sent = 0
        try:
            for byte in line:  # a byte every 50 ms: 6 s for the whole line, were it let through
                s.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, _ = read_answer(s)
        assert status == 408
        assert closed(s)
        assert 1.0 <= time.monotonic() - t0 < 3.0 and sent < len(line)


def test_an_idle_connection_is_let_go(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "HEADER_TIMEOUT", 0.5)
    monkeypatch.setattr(limits, "KEEPALIVE_TIMEOUT", 0.5)
    with server() as port, connect(port) as s:
        s.sendall(GET)
        assert read_answer(s)[0] == ok_status(server)
        t0 = time.monotonic()
        assert closed(s) and time.monotonic() - t0 < 3.0  # closed by the server, without another answer
    with server() as port, connect(port) as s:  # a connection that never sends a byte
        t0 = time.monotonic()
        assert closed(s) and time.monotonic() - t0 < 3.0


def test_a_declared_oversize_body_is_refused_before_it_is_sent(server: Server) -> None:
    with server() as port, connect(port) as s:
        t0 = time.monotonic()
        s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (200 * MiB))
        status, headers, body = read_answer(s)
        assert time.monotonic() - t0 < 1.0
        assert status == 413 and headers["connection"] == "close" and "larger than" in body.decode()
        json.loads(body)


def test_a_chunked_body_is_refused_when_it_grows_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    with door_server() as port, connect(port) as s:
        s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        s.sendall(b"80000\r\n" + b"x" * 0x80000 + b"\r\n")  # half the limit: read
        t0 = time.monotonic()
        s.sendall(b"%x\r\n" % (256 * MiB))  # one chunk of 256 MiB announced: refused before its first byte
        status, _, body = read_answer(s)
        assert status == 413 and "larger than" in json.loads(body)["error"] and time.monotonic() - t0 < 1.0


def test_the_status_page_never_reads_a_body(tmp_path: Path) -> None:
    with status_server(tmp_path) as port, connect(port) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        status, headers, body = read_answer(s)  # answered at once, the body never waited for
        assert status == 503 and headers["retry-after"] == "5" and "downloading the model m" in body.decode()
        assert closed(s)


def test_a_stalled_body_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "BODY_IDLE_TIMEOUT", 0.5)
    with door_server() as port, connect(port) as s:
        s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        t0 = time.monotonic()
        assert read_answer(s)[0] == 408 and 0.5 <= time.monotonic() - t0 < 3.0


def test_a_body_without_a_key_is_refused_before_it_is_read(tmp_path: Path) -> None:
    with door_server(auth=True) as port, connect(port) as s:
        s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")  # and no body
        status, _, body = read_answer(s)
        assert status == 401 and "API key" in json.loads(body)["error"]


def test_the_status_page_serves_its_page_and_progress(tmp_path: Path) -> None:
    with status_server(tmp_path) as port:
        with connect(port) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_answer(s)
            assert (status, body) == (200, b"<html>pulling</html>") and headers["connection"] == "close"
        with connect(port) as s:
            s.sendall(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 503 ") and data.endswith(b"\r\n\r\n")  # a HEAD: no body
        with connect(port) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = read_answer(s)
            answer: dict[str, Any] = json.loads(body)
            assert status == 503 and answer["status"] == "pulling" and answer["pull"]["percent"] == 12.5
