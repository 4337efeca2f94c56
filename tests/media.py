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


def png(width: int, height: int, fill: str = "gradient") -> bytes:
    """A real PNG without an imaging library. fill: "gradient" (RGB), "flat" (black: compresses about 1000:1, so
    a huge image is a small file, the decompression bomb) or "noise" (random: does not compress)."""
    import os
    import struct
    import zlib

    comp = zlib.compressobj(9)
    red = bytes(x * 255 // width for x in range(width))
    parts = []
    for y in range(height):
        if fill == "noise":
            row = bytearray(os.urandom(3 * width))
        else:
            row = bytearray(3 * width)
            if fill == "gradient":
                row[0::3] = red
                row[1::3] = bytes([y * 255 // height]) * width
                row[2::3] = b"\x80" * width
        parts.append(comp.compress(b"\x00" + bytes(row)))
    parts.append(comp.flush())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
