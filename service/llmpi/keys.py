"""API keys: inference is never open without one.

* LLMPI_API_KEY or LLMPI_API_KEY_FILE: the user's key(s) (one per line in the file, or comma-separated).
* neither: a key is generated at first start, stored on the data volume with mode 0600, printed once, and
  reused after restarts.
* LLMPI_AUTH=off: no key at all, only when asked for explicitly, with a warning at every start.
"""

from __future__ import annotations

import os
import secrets
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .config import ConfigError, file_env, get_bool, runtime_dir

KEY_FILE_NAME = "api_key"
ALLOWED = set(string.ascii_letters + string.digits + "-_.~+/=:")
MIN_LENGTH = 8


@dataclass(frozen=True)
class Auth:
    key_file: Path | None  # what llama-server gets as --api-key-file; None = no authentication
    generated: bool = False  # True on the start that created the key
    source: str = ""


def generate_key() -> str:
    return "sk-llmpi-" + secrets.token_urlsafe(32)


def _parse_keys(raw: str, origin: str) -> list[str]:
    keys = [k.strip() for line in raw.splitlines() if not line.lstrip().startswith("#") for k in line.split(",")]
    keys = [k for k in keys if k]
    if not keys:
        raise ConfigError(f"{origin} holds no key")
    for k in keys:
        bad = sorted(set(k) - ALLOWED)
        if bad:
            raise ConfigError(f"{origin}: a key contains characters that HTTP clients mangle: {''.join(bad)!r}")
        if len(k) < MIN_LENGTH:
            raise ConfigError(f"{origin}: a key of {len(k)} characters is too easy to guess (at least {MIN_LENGTH})")
    return keys


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600, atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def resolve(env: Mapping[str, str], data_dir: Path, out: TextIO = sys.stdout) -> Auth:
    if not get_bool(env, "LLMPI_AUTH", True):
        if file_env(env, "LLMPI_API_KEY") is not None:
            raise ConfigError("LLMPI_AUTH=off and an API key are both set; remove one of them")
        print(
            "llmpi: WARNING: LLMPI_AUTH=off: the API is open to anyone who can reach this port, "
            "with no key. Only do this on a network you fully trust.",
            file=out,
            flush=True,
        )
        return Auth(key_file=None, source="disabled")

    raw = file_env(env, "LLMPI_API_KEY")
    if raw is not None:
        origin = "LLMPI_API_KEY_FILE" if env.get("LLMPI_API_KEY_FILE", "").strip() else "LLMPI_API_KEY"
        keys = _parse_keys(raw, origin)
        key_file = runtime_dir() / "api_keys"
        _write_private(key_file, "\n".join(keys) + "\n")
        return Auth(key_file=key_file, source=origin)

    stored = data_dir / KEY_FILE_NAME
    if stored.exists():
        try:
            keys = _parse_keys(stored.read_text(), str(stored))
        except OSError as e:
            raise ConfigError(f"cannot read the stored API key {stored}: {e.strerror}") from None
        if stored.stat().st_mode & 0o077:
            os.chmod(stored, 0o600)
            print(f"llmpi: {stored} was readable by others; its mode is now 0600", file=out, flush=True)
        print(f"llmpi: using the API key stored in {stored} (generated at first start)", file=out, flush=True)
        return Auth(key_file=stored, source="stored")

    key = generate_key()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        _write_private(stored, key + "\n")
    except OSError as e:
        raise ConfigError(
            f"no API key is set and the generated one cannot be stored in {data_dir} ({e.strerror}); "
            "mount the data volume writable, or set LLMPI_API_KEY"
        ) from None
    return Auth(key_file=stored, generated=True, source="generated")
