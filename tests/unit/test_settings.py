"""One list of settings: the Settings object's, the README's table, compose.yaml's environment and .env.example."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from llmpi.core import env, settings
from llmpi.core.env import ConfigError
from llmpi.core.settings import COMPOSE_SETTINGS, HUB_VARIABLES, INTERNAL_SETTINGS, SETTINGS, Settings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent.parent


def readme_table() -> dict[str, str]:
    rows = re.findall(r"^\| `(LLMPI_[A-Z_]+)` \| ([^|]+) \|", (ROOT / "README.md").read_text(), re.MULTILINE)
    return {name: default.strip().strip("`") for name, default in rows}


def test_readme_table_lists_every_setting_with_its_default() -> None:
    table = readme_table()
    assert set(table) == set(SETTINGS) | set(COMPOSE_SETTINGS)
    assert {name: table[name] for name in SETTINGS} == SETTINGS


def test_compose_passes_every_setting_and_nothing_else() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    names = {entry.split("=", 1)[0] for entry in compose["services"]["llmpi"]["environment"]}
    assert names == set(SETTINGS) | set(HUB_VARIABLES)


def test_env_example_shows_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    shown = set(re.findall(r"^#?(LLMPI_[A-Z_]+)=", text, re.MULTILINE))
    assert shown <= set(SETTINGS) | set(COMPOSE_SETTINGS)
    assert set(SETTINGS) <= shown


def test_settings_reads_only_listed_variables() -> None:
    source = Path(settings.__file__).read_text().split("INTERNAL_SETTINGS = ", 1)[1]
    source += inspect.getsource(env.sysfs_path)  # LLMPI_SYSFS_PATH, read there for Settings and the listener
    read = set(re.findall(r'"(LLMPI_[A-Z_]+)"', source))
    assert read <= set(SETTINGS) | set(INTERNAL_SETTINGS)
    assert set(SETTINGS) - read <= {f"{n}_FILE" for n in read}  # *_FILE variants are read by file_env


def test_defaults_read_from_an_empty_environment() -> None:
    s = Settings.read({})
    assert (s.max_tokens, s.queue_max, s.remote_media, s.auth, s.port) == (1024, None, False, True, 8080)
    assert (s.max_body, s.max_connections, s.max_connections_per_client) == (32 * 1024 * 1024, 128, 16)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LLMPI_MAX_TOKENS", "-1", "too small"),
        ("LLMPI_QUEUE_MAX", "lots", "not a whole number"),
        ("LLMPI_PROMPT_CACHE", "big", "not a size"),
        ("LLMPI_REMOTE_MEDIA", "sometimes", "use on or off"),
        ("LLMPI_PORT", "70000", "out of range"),
        ("LLMPI_CHAT_TEMPLATE", "chatml", "not both"),
        ("LLMPI_MAX_BODY", "huge", "not a size"),
        ("LLMPI_MAX_CONNECTIONS", "0", "too small"),
        ("LLMPI_MAX_CONNECTIONS_PER_CLIENT", "many", "not a whole number"),
        ("LLMPI_CORS_ORIGINS", "http://ha.local:8123/path", "not an origin"),
        ("LLMPI_CORS_ORIGINS", "ha.local", "not an origin"),
    ],
)
def test_bad_values_are_refused(name: str, value: str, message: str) -> None:
    env = {name: value}
    if name == "LLMPI_CHAT_TEMPLATE":
        env["LLMPI_CHAT_TEMPLATE_FILE"] = "/x.jinja"
    with pytest.raises(ConfigError, match=message):
        Settings.read(env)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "*"),  # keys: any origin, with a key, never credentials
        ({"LLMPI_AUTH": "off"}, ""),  # no key: no other origin at all
        (
            {"LLMPI_AUTH": "off", "LLMPI_CORS_ORIGINS": "http://ha.local:8123/, https://[fd00::1]"},
            "http://ha.local:8123,https://[fd00::1]",
        ),
        ({"LLMPI_CORS_ORIGINS": "*"}, "*"),
    ],
)
def test_cors_origins(env: dict[str, str], expected: str) -> None:
    assert Settings.read(env).cors_origins == expected
