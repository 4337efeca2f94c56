"""Just enough HTTP/1.1 over asyncio streams for the Ollama door: requests in (keep-alive, Content-Length or chunked
bodies, bounded in size and time), replies out (whole, or chunked NDJSON), and llama-server's replies read over
loopback (whole, or a stream of lines). The standard library's http.client would bring ssl and email along: several
MiB of memory for nothing on a loopback socket (docs/ollama.md, the door's memory).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_HEADER = 64 * 1024  # a request's line and headers together
HEADER_TIMEOUT = 30.0  # seconds for a request's headers to arrive (a client that trickles them is let go)
BODY_TIMEOUT = 120.0  # seconds for a request's body (images on a slow Wi-Fi link)
REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class HTTPError(Exception):
    """A request that cannot be read: answered with this status and sentence, then the connection is closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes
    keep_alive: bool

    def json(self) -> Any:
        if not self.body.strip():
            return {}
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise HTTPError(400, "the request body is not valid JSON") from None


async def read_head(reader: asyncio.StreamReader, limit: int = MAX_HEADER) -> list[str] | None:
    """The request line and header lines; None when the client closed the connection between requests."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise HTTPError(400, "the request ended inside its headers") from None
    except asyncio.LimitOverrunError:
        raise HTTPError(431, f"the request's headers are longer than {limit} bytes") from None
    return raw.decode("latin-1").split("\r\n")[:-2]


def parse_headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise HTTPError(400, "a request header line has no name")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return headers


async def read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise HTTPError(400, "a bad chunk size in the request body") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        if len(body) + size > max_body:
            raise HTTPError(413, f"the request body is larger than {max_body} bytes")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def read_request(reader: asyncio.StreamReader, max_body: int) -> Request | None:
    """One request, its body whole; None at a clean end of the connection. Raises HTTPError for what cannot be
    read (the caller answers and closes)."""
    lines = await asyncio.wait_for(read_head(reader), HEADER_TIMEOUT)
    if lines is None:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPError(400, "not an HTTP/1.x request line")
    method, target, version = parts
    headers = parse_headers(lines[1:])
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await asyncio.wait_for(read_chunked(reader, max_body), BODY_TIMEOUT)
        else:
            length = int(headers.get("content-length") or 0)
            if length < 0:
                raise HTTPError(400, "a negative Content-Length")
            if length > max_body:
                raise HTTPError(413, f"the request body is larger than {max_body} bytes")
            body = await asyncio.wait_for(reader.readexactly(length), BODY_TIMEOUT) if length else b""
    except ValueError:
        raise HTTPError(400, "a bad Content-Length") from None
    except asyncio.IncompleteReadError:
        raise HTTPError(400, "the request body ended early") from None
    except TimeoutError:
        raise HTTPError(408, "the request body did not arrive in time") from None
    url = urlsplit(target)
    connection = headers.get("connection", "").lower()
    keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    return Request(method.upper(), url.path or "/", parse_qs(url.query), headers, body, keep)


def head_bytes(first_line: str, headers: Mapping[str, str]) -> bytes:
    lines = [first_line] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def status_line(status: int) -> str:
    return f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"


async def send(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str = "application/json; charset=utf-8",
    extra: Mapping[str, str] | None = None,
    keep_alive: bool = True,
) -> None:
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})}
    if not keep_alive:
        headers["Connection"] = "close"
    writer.write(head_bytes(status_line(status), headers) + body)
    await writer.drain()


async def send_json(
    writer: asyncio.StreamWriter,
    status: int,
    obj: Any,
    extra: Mapping[str, str] | None = None,
    keep_alive: bool = True,
) -> None:
    await send(writer, status, json.dumps(obj).encode(), extra=extra, keep_alive=keep_alive)


class NDJSONStream:
    """A chunked reply of one JSON object a line (Ollama's streams: application/x-ndjson)."""

    def __init__(self, writer: asyncio.StreamWriter, extra: Mapping[str, str] | None = None) -> None:
        self.writer = writer
        self.extra = dict(extra or {})
        self.started = False

    async def line(self, obj: Any) -> None:
        data = json.dumps(obj).encode() + b"\n"
        out = (
            b""
            if self.started
            else head_bytes(
                status_line(200),
                {"Content-Type": "application/x-ndjson", "Transfer-Encoding": "chunked", **self.extra},
            )
        )
        self.started = True
        self.writer.write(out + f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self.writer.drain()

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


# --- llama-server, over loopback ------------------------------------------------------------------------------


@dataclass
class Upstream:
    """llama-server's reply to one request: status and headers read, the body still on the socket."""

    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def chunks(self) -> AsyncIterator[bytes]:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    return
                yield await self.reader.readexactly(size)
                await self.reader.readexactly(2)
        elif "content-length" in self.headers:
            left = int(self.headers["content-length"])
            while left > 0:
                data = await self.reader.read(min(left, 65536))
                if not data:
                    raise ConnectionError("llama-server closed the connection early")
                left -= len(data)
                yield data
        else:
            while data := await self.reader.read(65536):
                yield data

    async def body(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def json(self) -> Any:
        data = await self.body()
        try:
            return json.loads(data)
        except ValueError:
            return {"error": {"message": data.decode("utf-8", "replace")[:500]}}

    async def lines(self) -> AsyncIterator[bytes]:
        """The body a line at a time (server-sent events), as each arrives."""
        pending = b""
        async for chunk in self.chunks():
            pending += chunk
            *done, pending = pending.split(b"\n")
            for line in done:
                yield line.rstrip(b"\r")
        if pending:
            yield pending

    def close(self) -> None:
        self.writer.close()


async def call(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes = b"",
) -> Upstream:
    """Send one request to llama-server on its own connection (closed after the reply: a client that goes away
    closes it early, and llama-server stops generating for it)."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    head = {"Host": f"{host}:{port}", "Connection": "close", **headers}
    if body or method in ("POST", "PUT", "DELETE"):
        head["Content-Length"] = str(len(body))
    writer.write(head_bytes(f"{method} {path} HTTP/1.1", head) + body)
    await writer.drain()
    try:
        lines = await read_head(reader, 1 << 20)
    except HTTPError:
        writer.close()
        raise ConnectionError("llama-server's reply ended inside its headers") from None
    if not lines:
        writer.close()
        raise ConnectionError("llama-server closed the connection without a reply")
    status = int(lines[0].split(" ")[1])
    return Upstream(status, parse_headers(lines[1:]), reader, writer)
