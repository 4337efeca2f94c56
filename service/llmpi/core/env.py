"""Reading LLMPI_* settings from the environment, postgres-style: every secret can come from VAR or VAR_FILE."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

CONFIG_ERROR_EXIT = 78  # EX_CONFIG: a setting is wrong; restarting will not help until it is fixed


class ConfigError(Exception):
    """A setting is wrong or a file it names is unusable; the message says which and what to do."""


def get(env: Mapping[str, str], name: str, default: str = "") -> str:
    """The value of a setting; an empty value counts as unset (compose passes unset variables as empty)."""
    value = env.get(name, "").strip()
    return value if value else default


def file_env(env: Mapping[str, str], name: str) -> str | None:
    """`name` or the contents of the file named by `name_FILE`; both at once is an error (like postgres)."""
    direct = env.get(name, "")
    file_name = env.get(f"{name}_FILE", "").strip()
    if direct.strip() and file_name:
        raise ConfigError(f"both {name} and {name}_FILE are set; set only one of them")
    if file_name:
        try:
            return Path(file_name).read_text()
        except OSError as e:
            raise ConfigError(f"{name}_FILE={file_name}: cannot read it ({e.strerror})") from None
    return direct if direct.strip() else None


def get_int(env: Mapping[str, str], name: str, default: int | None, minimum: int = 1) -> int | None:
    raw = get(env, name)
    if not raw or raw.lower() == "auto":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number (or 'auto')") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is too small (at least {minimum})")
    return value


OFF_WORDS = ("0", "off", "false", "no")


def get_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = get(env, name).lower()
    if not raw:
        return default
    if raw in ("1", "on", "true", "yes"):
        return True
    if raw in OFF_WORDS:
        return False
    raise ConfigError(f"{name}={raw!r}: use on or off")


def sysfs_path(env: Mapping[str, str]) -> Path:
    """LLMPI_SYSFS_PATH: Settings.read takes it from here, and so does the FATAL listener's process, which hosts the
    board watch and cannot afford the settings' imports (about 7 MiB for the container's whole life)."""
    return Path(get(env, "LLMPI_SYSFS_PATH", "/sys"))
