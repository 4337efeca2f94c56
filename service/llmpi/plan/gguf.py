"""A small, dependency-free GGUF reader: the metadata the launcher needs, and a completeness check.

Only the header, the key/value metadata and the tensor table are read (through mmap), so a multi-GB model is
inspected in well under a second. Arrays (the tokenizer's vocabulary) are skipped except for their length.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
QK_K = 256

# ggml tensor type id -> (elements per block, bytes per block); from the GGUF specification (gguf-py constants)
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 36),  # Q8_1
    10: (QK_K, 4 + QK_K // 16 + QK_K // 4),  # Q2_K
    11: (QK_K, 2 + QK_K // 4 + QK_K // 8 + 12),  # Q3_K
    12: (QK_K, 4 + QK_K // 2 + 12),  # Q4_K
    13: (QK_K, 4 + QK_K // 2 + QK_K // 8 + 12),  # Q5_K
    14: (QK_K, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),  # Q6_K
    15: (QK_K, 4 + QK_K + QK_K // 8),  # Q8_K
    16: (QK_K, 2 + QK_K // 4),  # IQ2_XXS
    17: (QK_K, 2 + QK_K // 4 + QK_K // 32),  # IQ2_XS
    18: (QK_K, 2 + QK_K // 4 + QK_K // 8),  # IQ3_XXS
    19: (QK_K, 2 + QK_K // 8 + QK_K // 16),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),  # IQ3_S
    22: (QK_K, 2 + QK_K // 4 + QK_K // 16),  # IQ2_S
    23: (QK_K, 4 + QK_K // 2 + QK_K // 64),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),  # IQ1_M
    30: (1, 2),  # BF16
    34: (QK_K, 2 + 4 * 13),  # TQ1_0
    35: (QK_K, 2 + 64),  # TQ2_0
    39: (32, 17),  # MXFP4
    40: (64, 36),  # NVFP4
    41: (128, 18),  # Q1_0
    42: (64, 18),  # Q2_0
}

# GGUF metadata value types: id -> struct format of a scalar (strings and arrays are handled apart)
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """The file is not a GGUF model llama.cpp could load (not GGUF, cut short, or of an unknown layout)."""


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        if self.ggml_type not in GGML_TYPE_SIZES:
            raise GGUFError(f"tensor {self.name!r} has unknown ggml type {self.ggml_type}")
        block, size = GGML_TYPE_SIZES[self.ggml_type]
        return self.n_elements // block * size


@dataclass
class GGUFInfo:
    path: Path
    file_size: int
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """A per-architecture key such as `context_length` (stored as `<arch>.context_length`)."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def expected_size(self) -> int:
        """The smallest file size that holds every tensor's data."""
        end = max((t.offset + t.n_bytes for t in self.tensors), default=0)
        return self.data_offset + end

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    def check_complete(self) -> None:
        """Raise GGUFError when the file is shorter than its tensor table says (an interrupted copy/download)."""
        expected = self.expected_size
        if self.file_size < expected:
            raise GGUFError(
                f"{self.path} is truncated: its tensors need {expected} bytes but the file has {self.file_size} "
                f"({expected - self.file_size} missing); the download or copy was cut short"
            )


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes, path: Path, keep: frozenset[str] = frozenset()) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path
        self.keep = keep  # keys whose long string arrays are read in full (the vocabulary), not skipped

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path} is truncated inside its header (at byte {self.pos})")

    def scalar(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self._need(n)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self) -> str:
        n = self.scalar("<Q")
        self._need(n)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.scalar("<Q")
        self._need(n)
        self.pos += n

    def value(self, vtype: int, key: str = "") -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.scalar("<I")
            count = self.scalar("<Q")
            if etype in _SCALARS:  # skip the values, keep the length
                size = struct.calcsize(_SCALARS[etype]) * count
                self._need(size)
                if count <= 64:
                    values = [self.value(etype) for _ in range(count)]
                    return values
                self.pos += size
            elif etype == _STRING and key in self.keep:
                return [self.string() for _ in range(count)]
            elif etype == _STRING:
                for _ in range(count):
                    self.skip_string()
            else:
                for _ in range(count):
                    self.value(etype)
            return _ArrayLen(count)
        raise GGUFError(f"{self.path}: unknown metadata value type {vtype} at byte {self.pos}")


class _ArrayLen(int):
    """Stands for a long array that was skipped; its value is the array's length."""


class HeaderTruncated(GGUFError):
    """The bytes given end inside the header: read more of the file (a partial read over HTTP)."""


class _PrefixReader(_Reader):
    """Reads the first bytes of a longer file: running out means "fetch more", not a truncated file."""

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise HeaderTruncated(f"{self.path}: the header goes on past byte {len(self.buf)}")


def read_gguf(path: str | Path, keep: frozenset[str] = frozenset()) -> GGUFInfo:
    """Read a GGUF file's metadata and tensor table. Raises GGUFError (with the reason) or OSError."""
    p = Path(path)
    size = p.stat().st_size
    if size < 24:
        raise GGUFError(f"{p} is not a GGUF model ({size} bytes)")
    with p.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return parse_gguf(buf, p, size, keep)


VOCAB_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
)


def read_vocabulary(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """A model's tokenizer: its kind and special tokens (VOCAB_KEYS present in the file) and every token's text."""
    info = read_gguf(path, keep=frozenset({"tokenizer.ggml.tokens"}))
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    texts = [str(t) for t in tokens] if isinstance(tokens, list) else []
    return {k: info.metadata[k] for k in VOCAB_KEYS if k in info.metadata}, texts


def parse_gguf(buf: mmap.mmap | bytes, p: Path, size: int, keep: frozenset[str] = frozenset()) -> GGUFInfo:
    """The metadata and tensor table from the file's first bytes (`buf`; all of it, or a prefix of a file of `size`
    bytes: HeaderTruncated when the header goes on past the prefix). String arrays are skipped (their length is
    kept) except those named in `keep`."""
    r = _PrefixReader(buf, p, keep) if len(buf) < size else _Reader(buf, p, keep)
    if buf[:4] != GGUF_MAGIC:
        raise GGUFError(f"{p} is not a GGUF model (it starts with {bytes(buf[:4])!r}, not b'GGUF')")
    r.pos = 4
    version = r.scalar("<I")
    if version not in (2, 3):
        raise GGUFError(f"{p} has GGUF version {version}; llama.cpp reads versions 2 and 3")
    n_tensors = r.scalar("<Q")
    n_kv = r.scalar("<Q")
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise GGUFError(f"{p} has an implausible header ({n_tensors} tensors, {n_kv} keys)")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.scalar("<I"), key)
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.scalar("<I")
        if n_dims > 8:
            raise GGUFError(f"{p}: tensor {name!r} has {n_dims} dimensions")
        shape = tuple(r.scalar("<Q") for _ in range(n_dims))
        tensors.append(TensorInfo(name, shape, r.scalar("<I"), r.scalar("<Q")))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
    data_offset = (r.pos + alignment - 1) // alignment * alignment
    return GGUFInfo(p, size, version, metadata, tensors, data_offset)
