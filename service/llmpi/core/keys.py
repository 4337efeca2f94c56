"""API keys: inference is never open without one.

Where keys come from:
* LLMPI_API_KEY or LLMPI_API_KEY_FILE: the user's key(s) (one per line in the file, or comma-separated);
* neither: a key is generated at first start and stored on the data volume (/data/api_key, mode 0600), reused after
  restarts; it is never printed to the log (`llmpi keys show` prints it);
* named keys, one per device, added and revoked while the server runs (`llmpi keys add phone`), stored in
  /data/keys as `name key [slots=N] [priority=high] [tokens-day=N] [tokens-hour=N]` lines (the key's share and
  limits, llama-server's patch 0027);
* LLMPI_AUTH=off: no key at all, only when asked for explicitly, with a warning at every start.

llama-server reads one file (`--api-key-file`), re-read when it changes: `server_keys_file()`, one key a line with
its name and share after it (`<key> name=phone slots=2 ...`: never the key in a log or a metric, the name instead),
written here and only here (`write_server_keys`), so its rules (one key a line, no commas, no CR) always hold.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import string
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from . import paths
from .env import ConfigError
from .files import write_private
from .settings import Settings

KEY_FILE_NAME = paths.API_KEY_FILE  # the generated key, on the data volume
NAMED_KEYS_FILE_NAME = "keys"  # named keys, on the data volume
ALLOWED = set(string.ascii_letters + string.digits + "-_.~+/=:")
MIN_LENGTH = 8
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


PRIORITIES = ("normal", "high")
DEFAULT_KEY_NAME = "default"  # the configured or generated key(s) in usage, metrics and the access log
ADMIN_KEY_NAME = "admin"


@dataclass(frozen=True)
class KeyPolicy:
    """A named key's share and limits (llama-server's patch 0027): most slots at once (0: no cap of its own), a high
    priority takes the next free slot first (a voice assistant), tokens (prompt + generated) a day and an hour
    (0: no limit)."""

    slots: int = 0
    priority: str = "normal"
    tokens_day: int = 0
    tokens_hour: int = 0

    def words(self) -> list[str]:
        """The key file's words for what is set: `slots=2 priority=high tokens-day=500`."""
        out = [f"slots={self.slots}"] if self.slots else []
        out += [f"priority={self.priority}"] if self.priority != "normal" else []
        out += [f"tokens-day={self.tokens_day}"] if self.tokens_day else []
        out += [f"tokens-hour={self.tokens_hour}"] if self.tokens_hour else []
        return out

    def describe(self) -> str:
        """For `llmpi keys list`: what is set, in words, or "" for none."""
        parts = [f"{self.slots} slot(s) at most"] if self.slots else []
        parts += ["high priority"] if self.priority == "high" else []
        parts += [f"{self.tokens_day} tokens a day"] if self.tokens_day else []
        parts += [f"{self.tokens_hour} tokens an hour"] if self.tokens_hour else []
        return ", ".join(parts)


POLICY_WORDS = {"slots": "slots", "priority": "priority", "tokens-day": "tokens_day", "tokens-hour": "tokens_hour"}


def parse_policy(words: list[str], where: str) -> KeyPolicy:
    """`slots=2 priority=high tokens-day=500 tokens-hour=100`; any other word is an error naming it."""
    values: dict[str, int | str] = {}
    for word in words:
        attr, eq, value = word.partition("=")
        if not eq or attr not in POLICY_WORDS:
            raise ConfigError(f"{where}: {word!r} is not slots=N, priority=high|normal, tokens-day=N or tokens-hour=N")
        if attr == "priority":
            if value not in PRIORITIES:
                raise ConfigError(f"{where}: priority={value!r}: use high or normal")
            values["priority"] = value
        elif not value.isdigit() or int(value) > 2**31 - 1:
            raise ConfigError(f"{where}: {attr}={value!r} is not a whole number (0 for none)")
        else:
            values[POLICY_WORDS[attr]] = int(value)
    return KeyPolicy(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Auth:
    enabled: bool
    generated: bool = False  # True on the start that created the key
    source: str = ""  # "LLMPI_API_KEY", "LLMPI_API_KEY_FILE", "stored", "generated" or "disabled"
    keys: tuple[str, ...] = ()  # the configured or stored keys (named keys come from the data volume)


def generate_key() -> str:
    return "sk-llmpi-" + secrets.token_urlsafe(32)


def parse_keys(raw: str, origin: str) -> list[str]:
    """Keys from text: one a line or comma-separated; blank lines and `#` comments skipped; whitespace and CR trimmed.
    Every key is checked: at least MIN_LENGTH characters, none that HTTP clients mangle."""
    found = [k.strip() for line in raw.splitlines() if not line.lstrip().startswith("#") for k in line.split(",")]
    found = [k for k in found if k]
    if not found:
        raise ConfigError(f"{origin} holds no key")
    for k in found:
        check_key(k, origin)
    return found


def check_key(key: str, origin: str) -> None:
    bad = sorted(set(key) - ALLOWED)
    if bad:
        raise ConfigError(f"{origin}: a key contains characters that HTTP clients mangle: {''.join(bad)!r}")
    if len(key) < MIN_LENGTH:
        raise ConfigError(f"{origin}: a key of {len(key)} characters is too easy to guess (at least {MIN_LENGTH})")


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is damaged (not text); delete it to generate a new key, or fix it") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None


def resolve(auth_on: bool, configured: str | None, origin: str, data_dir: Path) -> Auth:
    """Which keys protect the API. Generates and stores a key when none is configured or stored (a side effect, on
    the data volume: the caller is the launcher at start)."""
    if not auth_on:
        return Auth(enabled=False, source="disabled")
    if configured is not None:
        return Auth(enabled=True, source=origin, keys=tuple(parse_keys(configured, origin)))
    stored = data_dir / KEY_FILE_NAME
    if stored.exists():
        keys = parse_keys(_read_text(stored), str(stored))
        return Auth(enabled=True, source="stored", keys=tuple(keys))
    key = generate_key()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        write_private(stored, key + "\n")
    except OSError as e:
        raise ConfigError(
            f"no API key is set and the generated one cannot be stored in {data_dir} ({e.strerror}); "
            "mount the data volume writable, or set LLMPI_API_KEY"
        ) from None
    return Auth(enabled=True, generated=True, source="generated", keys=(key,))


def tighten_mode(path: Path) -> bool:
    """Make a key file on the volume private (0600); True when it was not."""
    if path.exists() and path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
        return True
    return False


# --- named keys -------------------------------------------------------------------------------------------------


def read_named(data_dir: Path) -> dict[str, tuple[str, KeyPolicy]]:
    """/data/keys: `name key [slots=N] [priority=high] [tokens-day=N] [tokens-hour=N]` a line; `#` comments and
    blank lines skipped. A bad line is an error naming it."""
    path = data_dir / NAMED_KEYS_FILE_NAME
    if not path.exists():
        return {}
    named: dict[str, tuple[str, KeyPolicy]] = {}
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        where = f"{path} line {number}"
        if len(parts) < 2 or not NAME_RE.match(parts[0]):
            raise ConfigError(
                f"{where}: expected `name key` (a name of letters, digits, . _ -), found {len(parts)} words"
            )
        check_key(parts[1], where)
        named[parts[0]] = (parts[1], parse_policy(parts[2:], where))
    return named


def read_named_keys(data_dir: Path) -> dict[str, str]:
    """The named keys: name → key."""
    return {name: key for name, (key, _) in read_named(data_dir).items()}


def write_named(data_dir: Path, named: dict[str, tuple[str, KeyPolicy]]) -> None:
    lines = ["# llmpi: named API keys, `name key [slots=N] [priority=high] [tokens-day=N] [tokens-hour=N]` a line;"]
    lines += ["# manage with `llmpi keys`"]
    lines += [" ".join([name, key, *policy.words()]) for name, (key, policy) in named.items()]
    write_private(data_dir / NAMED_KEYS_FILE_NAME, "\n".join(lines) + "\n")


def write_named_keys(data_dir: Path, named: dict[str, str]) -> None:
    """Named keys without a share or limits of their own (those already set for a name are kept)."""
    before = read_named(data_dir)
    write_named(data_dir, {name: (key, before.get(name, ("", KeyPolicy()))[1]) for name, key in named.items()})


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(f"{name!r} is not a key name: use up to 32 letters, digits, '.', '_' or '-'")


# --- what llama-server reads --------------------------------------------------------------------------------------


def server_keys_file() -> Path:
    return Path(paths.runtime_file(paths.SERVER_KEYS))


def admin_keys_file() -> Path:
    return Path(paths.runtime_file(paths.ADMIN_KEYS))


def canonical(
    keys: Iterable[str], refused: dict[str, int] | None = None, words: dict[str, list[str]] | None = None
) -> str:
    """llama-server's key file: one key a line, each once, in order, followed by its words (`words`: key → its name
    and share, `name=phone slots=2`, patch 0027); a key refused for a while (its fingerprint in `refused`, with the
    time it is refused until) as `!<until> <key>` (patch 0024)."""
    refused = refused or {}
    words = words or {}
    lines = []
    for k in dict.fromkeys(keys):
        until = refused.get(key_fingerprint(k))
        line = " ".join([k, *words.get(k, [])])
        lines.append(f"!{until} {line}\n" if until else f"{line}\n")
    return "".join(lines)


def server_key_words(auth: Auth, named: dict[str, tuple[str, KeyPolicy]], default_slots: int) -> dict[str, list[str]]:
    """Each key's name and share as llama-server reads them: the configured or generated key(s) `default` (then
    `default-2`, ...), a named key its name and policy; `default_slots` (LLMPI_KEY_MAX_SLOTS) where a key sets none."""
    base = KeyPolicy(slots=default_slots).words()
    words = {k: [f"name={DEFAULT_KEY_NAME}" + (f"-{i + 1}" if i else ""), *base] for i, k in enumerate(auth.keys)}
    for name, (key, policy) in named.items():
        own = policy if policy.slots else dataclasses.replace(policy, slots=default_slots)
        words[key] = [f"name={name}", *own.words()]
    return words


def key_fingerprint(key: str) -> str:
    """What llama-server's crash record says of a key (patch 0023): FNV-1a 64 of it, in hex; "0" for no key. It only
    tells known keys apart in the record; it is no protection of the key."""
    if not key:
        return "0"
    h = 14695981039346656037
    for byte in key.encode():
        h = ((h ^ byte) * 1099511628211) % 2**64
    return f"{h:x}"


def refused_keys(now: float) -> dict[str, int]:
    """The keys refused at `now` (REFUSED_KEYS, written by llmpi.process.crashes): fingerprint → until (epoch s)."""
    try:
        raw = json.loads(Path(paths.runtime_file(paths.REFUSED_KEYS)).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(fp): int(until) for fp, until in raw.items() if isinstance(until, (int, float)) and until > now}


def write_server_keys(auth: Auth, data_dir: Path, default_slots: int = 0) -> Path:
    """Write the keys llama-server accepts (the configured or stored ones plus the named ones, each with its name and
    share, those refused for a while marked so); it re-reads the file when it changes, so this also applies `llmpi
    keys add/set/revoke` to a running server."""
    path = server_keys_file()
    named = read_named(data_dir)
    words = server_key_words(auth, named, default_slots)
    keys = [*auth.keys, *(key for key, _ in named.values())]
    write_private(path, canonical(keys, refused_keys(time.time()), words))
    return path


def key_names(auth: Auth, data_dir: Path) -> dict[str, str]:
    """How the log names each key, by fingerprint: a named key by its name, the others by where they come from."""
    generated = auth.source in ("generated", "stored")
    origin = "the generated key" if generated else f"a key of {auth.source}"
    names = {key_fingerprint(k): origin for k in auth.keys}
    names.update({key_fingerprint(k): f"the key {name!r}" for name, k in read_named_keys(data_dir).items()})
    names["0"] = "no key"
    return names


def write_admin_keys(raw: str | None) -> Path:
    """The router's admin keys (model management): a key generated at each start, first, for `llmpi models` inside
    the container (it never leaves the runtime directory), then LLMPI_ADMIN_KEY's, if set."""
    path = admin_keys_file()
    user = parse_keys(raw, "LLMPI_ADMIN_KEY") if raw is not None else []
    all_keys = [generate_key(), *user]
    write_private(path, canonical(all_keys, words={k: [f"name={ADMIN_KEY_NAME}"] for k in all_keys}))
    return path


def first_key(path: Path) -> str | None:
    """The first key of a key file llmpi wrote (one a line, its words after it) that is not refused for a while, or
    None when there is none."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        words = line.split()
        if words and not words[0].startswith(("!", "#")):
            return words[0]
    return None


def internal_admin_key() -> str | None:
    """The admin key generated at this container's start (None before the launcher ran)."""
    return first_key(admin_keys_file())


def apply_keys(s: Settings, out: TextIO) -> Auth:
    """Side effects on keys: a key generated (and stored on the volume) at first start, the server's key files."""
    auth = resolve(s.auth, s.api_keys, s.api_keys_origin, s.data_dir)
    write_admin_keys(s.admin_keys)  # the router's model management (router mode only)
    if not auth.enabled:
        print(
            "llmpi: WARNING: LLMPI_AUTH=off: the API is open to anyone who can reach this port, "
            "with no key. Only do this on a network you fully trust.",
            file=out,
            flush=True,
        )
        return auth
    stored = s.data_dir / KEY_FILE_NAME
    if auth.source == "stored":
        if tighten_mode(stored):
            print(f"llmpi: {stored} was readable by others; its mode is now 0600", file=out, flush=True)
        print(f"llmpi: using the API key stored in {stored} (generated at first start)", file=out, flush=True)
    named = read_named_keys(s.data_dir)
    if named:
        print(f"llmpi: {len(named)} named key(s): {', '.join(named)}", file=out, flush=True)
    write_server_keys(auth, s.data_dir, s.key_max_slots)
    return auth


def banner(port: str, data_dir: Path) -> str:
    line = "=" * 78
    return "\n".join(
        [
            line,
            f"llmpi: a new API key was generated and stored in {data_dir / KEY_FILE_NAME} (it is never logged).",
            "       Show it with:   docker compose exec llmpi llmpi keys show",
            "       A key per device: docker compose exec llmpi llmpi keys add <name>",
            f"       base_url:       http://<this machine's address>:{port}/v1",
            line,
        ]
    )
