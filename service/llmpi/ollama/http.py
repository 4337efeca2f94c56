"""Just enough HTTP/1.1 over asyncio streams for the Ollama door: requests in (keep-alive, Content-Length or chunked
bodies, bounded in size and time), replies out (whole, or chunked NDJSON), and llama-server's replies read over
loopback (whole, or a stream of lines). The standard library's http.client would bring ssl and email along: several
MiB of memory for nothing on a loopback socket (docs/ollama.md, the door's memory).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..core import limits
from ..core.limits import HTTPError, parse_headers

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


async def read_request(
    reader: asyncio.StreamReader,
    max_body: int,
    fresh: bool = True,
    check: Callable[[Request], None] | None = None,
) -> Request | None:
    """One request, its body whole, within the limits of llmpi.core.limits; None at a clean end of the connection
    (or one left idle). `fresh`: the connection's first request. `check` looks at the request before its body is
    read, and may refuse it by raising (the door's key check: a client without a key never gets a body buffered).
    Raises HTTPError for what cannot be read (the caller answers and closes)."""
    lines = await limits.read_head(reader, fresh)
    if lines is None:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPError(400, "not an HTTP/1.x request line")
    method, target, version = parts
    headers = parse_headers(lines[1:])
    length = limits.declared_length(headers, max_body)  # 413 before a byte of the body is read
    url = urlsplit(target)
    connection = headers.get("connection", "").lower()
    keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    req = Request(method.upper(), url.path or "/", parse_qs(url.query), headers, b"", keep)
    if check is not None and length != 0:
        check(req)
    req.body = await limits.read_body(reader, length, max_body)
    return req


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
    try:  # no timeout: llama-server sends a whole answer's head when the answer is done (minutes on a Pi)
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        writer.close()
        raise ConnectionError("llama-server closed the connection without a whole reply head") from None
    lines = raw.decode("latin-1").split("\r\n")[:-2]
    status = int(lines[0].split(" ")[1])
    return Upstream(status, parse_headers(lines[1:]), reader, writer)
