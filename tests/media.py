"""Test media made without an imaging library."""

from __future__ import annotations

import base64

from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_message(url: str, text: str | None = None) -> list[ChatCompletionMessageParam]:
    """One user turn with an image (and a question), as the recipe's listing 11.2 sends it."""
    parts: list[ChatCompletionContentPartParam] = [{"type": "text", "text": text}] if text else []
    parts.append({"type": "image_url", "image_url": {"url": url}})
    return [{"role": "user", "content": parts}]


def png(width: int, height: int) -> bytes:
    """A real PNG (RGB gradient), without an imaging library."""
    import struct
    import zlib

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 128)) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
