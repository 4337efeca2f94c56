"""The one SSE reader (benchlib.sse) that the scripts and the tests share."""

from __future__ import annotations

import json

import pytest

from benchlib import sse

pytestmark = pytest.mark.unit


def _stream(*texts: str, end: bytes = b"data: [DONE]\n\n") -> bytes:
    body = b"".join(
        b"data: " + json.dumps({"choices": [{"delta": {"content": t}}]}, ensure_ascii=False).encode() + b"\n\n"
        for t in texts
    )
    return body + end


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_utf8_with_byte_0x85_is_one_event_at_any_chunk_size(size: int) -> None:
    # "購" is e8 b3 bc and "…" is e2 80 a6; U+0085 as Latin-1 would be a line break for str.splitlines()
    raw = _stream("を購", "…", "a\u2028b")
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    events = list(sse.events(chunks))
    assert len(events) == 3
    assert sse.content(events) == "を購…a\u2028b"


def test_the_stream_ends_at_done_and_says_so() -> None:
    events, done = sse.saw_done([_stream("x", end=b"data: [DONE]\n\ndata: {}\n\n")])
    assert (sse.content(events), done) == ("x", True)
    assert sse.saw_done([_stream("x", end=b"")])[1] is False


def test_crlf_line_ends_and_an_error_line() -> None:
    raw = b'data: {"a": 1}\r\n\r\nerror: {"code": 500}\r\n'
    assert list(sse.payloads([raw])) == ['{"a": 1}', json.dumps({"error": '{"code": 500}'})]


def test_a_payload_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        list(sse.events([b"data: [1, 2]\n\n"]))
