"""The connection limits of llmpi's own HTTP servers, the Ollama door and the status page (docs/security.md), in
nginx's terms: `client_header_timeout`, `client_body_timeout`, `keepalive_timeout`, `limit_conn` per address and in
total, `client_max_body_size`.

A connection over a cap is refused where asyncio accepts it (`Gate.connection_made`): a canned 503 is written and the
socket closed; the handler never runs for it (no task, no stream writer, no thread; only the protocol object and its
empty stream reader exist). A request's line and headers must arrive whole
within HEADER_TIMEOUT (a client that trickles them a byte at a time is cut off), a body without a pause of
BODY_IDLE_TIMEOUT and whole within BODY_TIMEOUT, and a body over the limit is refused (413) from its Content-Length
before it is read, or as soon as a chunked body's chunks add up past it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .settings import Settings

# seconds for a request's line and headers, whole, from their first byte (on a new connection, from its start)
HEADER_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 15.0  # seconds an open connection may wait idle for its next request
BODY_IDLE_TIMEOUT = 10.0  # seconds a body may pause between two reads
BODY_TIMEOUT = 120.0  # seconds for a whole body (32 MiB on a link of 2.2 Mbit/s)
MAX_HEADER = 64 * 1024  # a request's line and headers together
LINGER = 1.0  # seconds a refused client has to read its answer while what it still sends is thrown away
LINGER_BYTES = 1 << 20  # ... and at most this much of it
RETRY_AFTER = 2  # seconds, in the 503 of a connection over a cap
BACKLOG = 1024  # connections the kernel holds until they are accepted (and refused at once when over a cap)
REASONS = {
    200: "OK",
    400: "Bad Request",
    408: "Request Timeout",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class HTTPError(Exception):
    """A request that cannot be read: answered with this status and sentence, then the connection is closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """LLMPI_MAX_BODY, LLMPI_MAX_CONNECTIONS, LLMPI_MAX_CONNECTIONS_PER_CLIENT for one server."""

    max_body: int
    max_connections: int
    max_per_client: int
    count_loopback: bool = False  # loopback is the container's own processes (the healthcheck); tests count it

    @classmethod
    def of(cls, s: Settings) -> Limits:
        return cls(s.max_body, s.max_connections, s.max_connections_per_client)


def client_of(peer: object) -> str:
    """The client's IP address from a socket's peer name (an IPv4-mapped IPv6 address as the IPv4 one)."""
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def is_loopback(client: str) -> bool:
    try:
        return ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False


@dataclass
class Caps:
    """The open connections of one server, in total and by client address."""

    limits: Limits
    total: int = 0
    by_client: dict[str, int] = field(default_factory=dict)
    transports: set[asyncio.Transport] = field(default_factory=set)  # every open connection, refused ones too

    def admit(self, client: str) -> bool:
        """Count a new connection from `client`; False (and nothing counted) when it is over a cap."""
        counted = self.limits.count_loopback or not is_loopback(client)
        if self.total >= self.limits.max_connections:
            return False
        if counted and self.by_client.get(client, 0) >= self.limits.max_per_client:
            return False
        self.total += 1
        if counted:
            self.by_client[client] = self.by_client.get(client, 0) + 1
        return True

    def close_all(self) -> None:
        """End every open connection (a server that stops)."""
        for transport in list(self.transports):
            transport.abort()

    def release(self, client: str) -> None:
        self.total -= 1
        left = self.by_client.get(client, 0) - 1
        if left > 0:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)


def reply(
    status: int,
    body: bytes,
    content_type: str = "application/json; charset=utf-8",
    retry_after: int | None = None,
    head_only: bool = False,
) -> bytes:
    """A whole HTTP/1.1 answer that closes its connection (`head_only`: without its body, for a HEAD request)."""
    head = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


def json_reply(status: int, obj: object, retry_after: int | None = None) -> bytes:
    return reply(status, json.dumps(obj).encode(), retry_after=retry_after)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Gate(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol for one accepted connection, which refuses it when it is over a cap: the canned
    answer written, the sending side shut, what the client still sends thrown away (LINGER seconds, LINGER_BYTES at
    most, so that it reads the answer instead of a reset), then closed; the handler never runs for it."""

    def __init__(self, caps: Caps, busy: bytes, handler: Handler, limit: int) -> None:
        super().__init__(asyncio.StreamReader(limit=limit), handler)
        self._caps, self._busy = caps, busy
        self._client: str | None = None  # set while the connection is counted
        self._refused: asyncio.Transport | None = None
        self._thrown = 0
        self._own: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._caps.transports.add(transport)
        self._own = transport
        client = client_of(transport.get_extra_info("peername"))
        if self._caps.admit(client):
            self._client = client
            super().connection_made(transport)
            return
        self._refused = transport
        transport.write(self._busy)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused is None:
            super().data_received(data)
            return
        self._thrown += len(data)
        if self._thrown > LINGER_BYTES:
            self._refused.close()

    def eof_received(self) -> bool:
        if self._refused is None:
            return bool(super().eof_received())
        self._refused.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._own is not None:
            self._caps.transports.discard(self._own)
        if self._client is not None:
            self._caps.release(self._client)
            self._client = None
        if self._refused is None:
            super().connection_lost(exc)


async def start_server(
    handler: Handler, sock: socket.socket, caps: Caps, busy: bytes, tls: Any = None
) -> asyncio.Server:
    """asyncio's start_server on a bound socket, with each connection over a cap refused as it is accepted; `tls`:
    an ssl.SSLContext to serve HTTPS with (asyncio hands a connection over once its TLS handshake is done, within
    10 s: the caps are decided then; a handshake in progress holds no task and no thread)."""
    loop = asyncio.get_running_loop()

    def gate() -> Gate:
        return Gate(caps, busy, handler, MAX_HEADER)

    if tls is None:
        return await loop.create_server(gate, sock=sock, backlog=BACKLOG)
    return await loop.create_server(gate, sock=sock, backlog=BACKLOG, ssl=tls, ssl_handshake_timeout=10)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (bound here, so that a port in use is the caller's error, at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG, reuse_port=False)
    sock.setblocking(False)
    return sock


async def read_head(reader: asyncio.StreamReader, fresh: bool) -> list[str] | None:
    """A request's line and header lines. None when the connection ended, or stayed idle (KEEPALIVE_TIMEOUT after a
    request, HEADER_TIMEOUT on a new connection) without a byte of a request: closed without an answer. The line and
    headers must be whole within HEADER_TIMEOUT of their first byte (of the connection's start when it is new), or
    this is a 408."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        first = await asyncio.wait_for(reader.readexactly(1), HEADER_TIMEOUT if fresh else KEEPALIVE_TIMEOUT)
    except (TimeoutError, asyncio.IncompleteReadError):
        return None
    deadline = (start if fresh else loop.time()) + HEADER_TIMEOUT
    try:
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(deadline - loop.time(), 0.0))
    except TimeoutError:
        raise HTTPError(408, f"the request's headers did not arrive within {HEADER_TIMEOUT:.0f} s") from None
    except asyncio.IncompleteReadError:
        raise HTTPError(400, "the request ended inside its headers") from None
    except asyncio.LimitOverrunError:
        raise HTTPError(431, f"the request's headers are longer than {MAX_HEADER} bytes") from None
    return (first + rest).decode("latin-1").split("\r\n")[:-2]


def parse_headers(lines: list[str]) -> dict[str, str]:
    """Header lines as a dict, names in lower case (a repeated header's values joined by commas)."""
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise HTTPError(400, "a request header line has no name")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return headers


def declared_length(headers: dict[str, str], max_body: int) -> int | None:
    """The body's Content-Length, checked against the limit before a byte of the body is read; None for a chunked
    body (checked as it is read)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return None
    try:
        length = int(headers.get("content-length") or 0)
    except ValueError:
        raise HTTPError(400, "a bad Content-Length") from None
    if length < 0:
        raise HTTPError(400, "a negative Content-Length")
    if length > max_body:
        raise HTTPError(413, f"the request body is larger than {max_body} bytes")
    return length


class BodyReader:
    """Reads one request's body against the clock: no pause over BODY_IDLE_TIMEOUT, all of it within BODY_TIMEOUT."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + BODY_TIMEOUT

    async def _timed(self, step: Awaitable[bytes]) -> bytes:
        left = self.deadline - self.loop.time()
        try:
            return await asyncio.wait_for(step, max(min(BODY_IDLE_TIMEOUT, left), 0.0))
        except TimeoutError:
            raise HTTPError(408, "the request body did not arrive in time") from None
        except asyncio.IncompleteReadError:
            raise HTTPError(400, "the request body ended early") from None
        except asyncio.LimitOverrunError:
            raise HTTPError(400, "a chunk's size line is too long") from None

    async def exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            data = await self._timed(self.reader.read(min(n - len(out), 1 << 16)))
            if not data:
                raise HTTPError(400, "the request body ended early")
            out += data
        return bytes(out)

    async def chunked(self, max_body: int) -> bytes:
        body = bytearray()
        while True:
            size_line = await self._timed(self.reader.readuntil(b"\r\n"))
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise HTTPError(400, "a bad chunk size in the request body") from None
            if size < 0:
                raise HTTPError(400, "a bad chunk size in the request body")
            if size == 0:
                while (await self._timed(self.reader.readuntil(b"\r\n"))) != b"\r\n":  # trailers
                    pass
                return bytes(body)
            if len(body) + size > max_body:
                raise HTTPError(413, f"the request body is larger than {max_body} bytes")
            body += await self.exactly(size)
            if await self.exactly(2) != b"\r\n":
                raise HTTPError(400, "a chunk of the request body does not end where its size says")


async def read_body(reader: asyncio.StreamReader, length: int | None, max_body: int) -> bytes:
    """A request's body, `length` bytes (declared_length's answer; None: chunked), within the limits (413, 408, 400
    as HTTPError)."""
    body = BodyReader(reader)
    if length is None:
        return await body.chunked(max_body)
    return await body.exactly(length) if length else b""


async def linger_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close a connection after an answer that left part of the request unread (a 413, a 408): the sending side shut
    first, then what the client still sends thrown away for LINGER seconds (LINGER_BYTES at most), so that the
    client reads the answer instead of a reset."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER
    thrown = 0
    try:
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        while thrown <= LINGER_BYTES and (left := deadline - loop.time()) > 0:
            data = await asyncio.wait_for(reader.read(1 << 16), left)
            if not data:
                break
            thrown += len(data)
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
