"""Write small GGUF files for tests: real GGUF layout (header, metadata, tensor table, aligned data)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

_TYPES = {bool: 7, int: 4, float: 6, str: 8}


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _value(v: Any) -> tuple[int, bytes]:
    if isinstance(v, bool):
        return 7, struct.pack("<?", v)
    if isinstance(v, int):
        return (4, struct.pack("<I", v)) if 0 <= v < 2**32 else (11, struct.pack("<q", v))
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, _string(v)
    if isinstance(v, list):
        etype = 8 if v and isinstance(v[0], str) else 4
        body = b"".join(_value(x)[1] for x in v)
        return 9, struct.pack("<IQ", etype, len(v)) + body
    raise TypeError(type(v))


def write_gguf(path: Path, metadata: dict[str, Any], tensors: dict[str, tuple[int, ...]], truncate: int = 0) -> Path:
    """F32 tensors of the given shapes (zeros). `truncate` drops that many bytes from the end."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for k, v in metadata.items():
        t, body = _value(v)
        out += _string(k) + struct.pack("<I", t) + body
    offset = 0
    sizes = []
    for name, shape in tensors.items():
        n = 1
        for d in shape:
            n *= d
        out += _string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", 0, offset)
        sizes.append(n * 4)
        offset += (n * 4 + 31) // 32 * 32
    out += b"\0" * ((32 - len(out) % 32) % 32)
    for size in sizes:
        out += b"\0" * ((size + 31) // 32 * 32)
    data = bytes(out[: len(out) - truncate] if truncate else out)
    path.write_bytes(data)
    return path


def llama_like(
    path: Path,
    n_layer: int = 2,
    n_embd: int = 64,
    n_ctx_train: int = 4096,
    vocab: int = 32,
    truncate: int = 0,
    tokens: list[str] | None = None,
) -> Path:
    """A Llama-shaped GGUF: enough metadata for the launcher's checks, tiny tensors. `tokens`: the vocabulary
    (default t0 ... t<vocab-1>), with a SentencePiece tokenizer's kind and special tokens."""
    tokens = tokens if tokens is not None else [f"t{i}" for i in range(vocab)]
    vocab = len(tokens)
    meta: dict[str, Any] = {
        "general.architecture": "llama",
        "general.name": "tiny test model",
        "llama.context_length": n_ctx_train,
        "llama.embedding_length": n_embd,
        "llama.block_count": n_layer,
        "llama.feed_forward_length": n_embd * 2,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.tokens": tokens,
    }
    tensors: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_embd, vocab)}
    for i in range(n_layer):
        tensors[f"blk.{i}.attn_q.weight"] = (n_embd, n_embd)
    return write_gguf(path, meta, tensors, truncate=truncate)
