"""Named keys with a share and limits (llmpi.core.keys, llmpi.cli.keys) as llama-server's key file carries them to
patch 0027, and the usage ledger as `llmpi keys usage` reads it (llmpi.usage.ledger)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from llmpi.cli import main as cli
from llmpi.core import keys
from llmpi.core.env import ConfigError
from llmpi.usage import ledger

pytestmark = pytest.mark.unit

TV = "sk-llmpi-tv-0123456789"


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMPI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LLMPI_API_KEY", "sk-configured-key-1")
    monkeypatch.delenv("LLMPI_KEY_MAX_SLOTS", raising=False)
    return tmp_path


def server_lines() -> list[str]:
    return keys.server_keys_file().read_text().splitlines()


def test_policy_words_round_trip_and_bad_words_are_named() -> None:
    policy = keys.parse_policy(["slots=2", "priority=high", "tokens-day=500", "tokens-hour=100"], "here")
    assert policy == keys.KeyPolicy(2, "high", 500, 100)
    assert keys.parse_policy(policy.words(), "here") == policy
    assert keys.KeyPolicy().words() == [] and keys.KeyPolicy().describe() == ""
    assert policy.describe() == "2 slot(s) at most, high priority, 500 tokens a day, 100 tokens an hour"
    for bad, message in [("slots=-1", "whole number"), ("priority=urgent", "high or normal"), ("colour=red", "is not")]:
        with pytest.raises(ConfigError, match=message):
            keys.parse_policy([bad], "/data/keys line 3")


def test_keys_add_and_set_carry_the_share_to_llama_servers_key_file(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["keys", "add", "laptop", "--max-slots", "2"]) == 0
    laptop = capsys.readouterr().out.strip()
    assert cli.main(["keys", "add", "assistant", "--priority", "high", "--daily-tokens", "500"]) == 0
    assistant = capsys.readouterr().out.strip()
    assert server_lines() == [
        "sk-configured-key-1 name=default",
        f"{laptop} name=laptop slots=2",
        f"{assistant} name=assistant priority=high tokens-day=500",
    ]
    # set changes what it is given and keeps the rest, and the key itself
    assert cli.main(["keys", "set", "assistant", "--daily-tokens", "0", "--hourly-tokens", "50"]) == 0
    assert "high priority, 50 tokens an hour" in capsys.readouterr().out
    assert server_lines()[2] == f"{assistant} name=assistant priority=high tokens-hour=50"
    assert keys.read_named_keys(data) == {"laptop": laptop, "assistant": assistant}
    assert cli.main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert "2 slot(s) at most" in listed and laptop not in listed
    # names the log and the metrics give the configured and admin keys are not for devices; bad values are refused
    assert cli.main(["keys", "add", "default"]) == 2 and "choose another name" in capsys.readouterr().err
    assert cli.main(["keys", "set", "nobody", "--max-slots", "1"]) == 2 and "no key named" in capsys.readouterr().err
    assert cli.main(["keys", "set", "laptop", "--max-slots", "-1"]) == 2 and "0 or more" in capsys.readouterr().err


def test_a_default_share_for_keys_without_their_own(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPI_KEY_MAX_SLOTS", "3")
    assert cli.main(["keys", "add", "laptop", "--max-slots", "1"]) == 0
    assert cli.main(["keys", "add", "phone"]) == 0
    lines = server_lines()
    assert lines[0].endswith("name=default slots=3")
    assert lines[1].endswith("name=laptop slots=1") and lines[2].endswith("name=phone slots=3")


def test_older_named_key_files_still_read(data: Path) -> None:
    """`name key` lines, as llmpi wrote them before shares: read, and written back unchanged in meaning."""
    (data / "keys").write_text(f"# llmpi\ntv {TV}\n")
    assert keys.read_named(data) == {"tv": (TV, keys.KeyPolicy())}
    (data / "keys").write_text(f"tv {TV} slots=many\n")
    with pytest.raises(ConfigError, match=r"line 1: slots='many' is not a whole number"):
        keys.read_named(data)


def test_refused_and_first_keys_read_past_the_words(tmp_path: Path) -> None:
    path = tmp_path / "api_keys"
    path.write_text(keys.canonical([TV, "sk-llmpi-phone-123"], {keys.key_fingerprint(TV): 2_000_000_000},
                                   {TV: ["name=tv"], "sk-llmpi-phone-123": ["name=phone"]}))  # fmt: skip
    assert path.read_text() == f"!2000000000 {TV} name=tv\nsk-llmpi-phone-123 name=phone\n"
    assert keys.first_key(path) == "sk-llmpi-phone-123"  # the refused one is not the health check's key


LEDGER = {
    "since": 1_764_000_000,
    "keys": {
        "kitchen": {
            "total": {
                "requests": 5,
                "errors": 1,
                "prompt_tokens": 100,
                "completion_tokens": 40,
                "queue_seconds": 1.5,
                "slot_seconds": 9.0,
            },
            "days": {
                "2026-12-07": {"requests": 2, "prompt_tokens": 30, "completion_tokens": 10},
                "2026-12-03": {"requests": 2, "prompt_tokens": 50, "completion_tokens": 20},
                "2026-11-20": {"requests": 1, "prompt_tokens": 20, "completion_tokens": 10},
            },
        },
        "laptop": {"total": {"requests": 1, "prompt_tokens": 7, "completion_tokens": 3}, "days": {}},
    },
}


def test_usage_today_this_week_and_since_the_start(tmp_path: Path) -> None:
    summary = ledger.summarize(LEDGER, dt.date(2026, 12, 7))
    kitchen = summary.keys[0]
    assert kitchen.name == "kitchen"
    assert (kitchen.today.prompt_tokens, kitchen.today.completion_tokens, kitchen.today.requests) == (30, 10, 2)
    assert (kitchen.week.tokens, kitchen.week.requests) == (110, 4)  # 2026-11-20 is not in this week
    assert (kitchen.total.tokens, kitchen.total.errors) == (140, 1)
    text = ledger.table(summary)
    assert "kitchen  30/10 (2)" in text and "80/30 (4)" in text and "100/40 (5)" in text
    assert "kitchen: 1 error(s), 1.5 s waiting for a slot" in text
    assert json.loads(json.dumps(ledger.as_json(summary)))["keys"]["laptop"]["total"]["prompt_tokens"] == 7
    assert ledger.table(ledger.summarize({}, dt.date(2026, 12, 7))).startswith("no request has been answered")
    (tmp_path / "usage.json").write_text("{half")
    with pytest.raises(ConfigError, match="damaged"):
        ledger.read(tmp_path / "usage.json")
    assert ledger.read(tmp_path / "missing.json") == {}
