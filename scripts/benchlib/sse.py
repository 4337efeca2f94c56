"""One reader of llama-server's server-sent events (SSE), for every script and test.

It works on bytes and splits lines at b"\\n" only, then decodes each whole line as UTF-8. Reading with
`requests`' `iter_lines(decode_unicode=True)` instead decodes each chunk on its own and splits on
`str.splitlines()` boundaries. Those boundaries include U+0085 and U+2028, and Latin-1 decoding turns a UTF-8 byte
0x85 into U+0085, so a character such as "購" (e8 b3 bc) or "を" (e3 82 92) next to one can cut an event in two.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

DONE = "[DONE]"


def lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The stream's lines, each decoded whole, without the line end (b"\\n" or b"\\r\\n")."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *whole, pending = pending.split(b"\n")
        for line in whole:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", errors="replace")


def _data(chunks: Iterable[bytes]) -> Iterator[str]:
    """Every `data:` payload, `[DONE]` included; an `error:` line (llama-server's way of ending a stream with an
    error) becomes a JSON {"error": ...} payload."""
    for line in lines(chunks):
        if line.startswith("data:"):
            yield line[5:].strip()
        elif line.startswith("error:"):
            yield json.dumps({"error": line[6:].strip()})


def payloads(chunks: Iterable[bytes]) -> Iterator[str]:
    """The `data:` payloads, in order, up to and without `[DONE]` (see `_data` for `error:` lines)."""
    for data in _data(chunks):
        if data == DONE:
            return
        yield data


def _object(data: str) -> dict[str, Any]:
    event = json.loads(data)
    if not isinstance(event, dict):
        raise ValueError(f"a server-sent event that is not a JSON object: {data[:200]!r}")
    return event


class Stream:
    """The events of one stream as JSON objects, read as they arrive (a loop over it can time each one); after the
    loop, `done` says whether `data: [DONE]` ended the stream (any other end is a cut stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self.done = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for data in _data(self._chunks):
            if data == DONE:
                self.done = True
                return
            yield _object(data)


def events(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The `data:` payloads as JSON objects, up to `[DONE]`; ValueError for a payload that is not an object."""
    return iter(Stream(chunks))


def saw_done(chunks: Iterable[bytes]) -> tuple[list[dict[str, Any]], bool]:
    """Every event and whether the stream ended with `data: [DONE]`."""
    stream = Stream(chunks)
    return list(stream), stream.done


def content(events_: Iterable[dict[str, Any]]) -> str:
    """The text of a streamed chat completion: every choice's `delta.content`, joined."""
    return "".join(
        (choice.get("delta") or {}).get("content") or "" for e in events_ for choice in e.get("choices") or []
    )
