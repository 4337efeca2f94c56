"""llmpi.process.crashes: llama-server's crash record read at the next start, the newest request's key named, a key
that crashed it twice within a minute refused in the key file llama-server reads (patches 0023, 0024)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from llmpi.core import keys, paths
from llmpi.process import crashes

PHONE = "sk-llmpi-phone-key-0123456789"
TV = "sk-llmpi-tv-key-0123456789"


def write_record(text: str) -> Path:
    path = Path(paths.make_runtime_dir()) / paths.CRASH_RECORD
    path.write_text(text)
    return path


def record(at_ms: int, *requests: tuple[str, int, int]) -> str:
    return f"crash 11 {at_ms}\n" + "".join(f"{keys.key_fingerprint(k) if k else '0'} {began} {state}\n"
                                           for k, began, state in requests)  # fmt: skip


def test_the_fingerprint_is_fnv1a_64_as_llama_server_computes_it() -> None:
    assert keys.key_fingerprint("a") == "af63dc4c8601ec8c"  # the published FNV-1a 64 test vector
    assert keys.key_fingerprint("") == "0"


def test_no_record_or_an_empty_one_is_no_crash(tmp_path: Path) -> None:
    assert crashes.read_crash_record(tmp_path / "none") is None
    assert crashes.read_crash_record(write_record("")) is None


def test_a_record_cut_short_is_a_crash_with_nobody_to_blame() -> None:
    crash = crashes.read_crash_record(write_record("crash 11 1700000000000\nabc"))
    assert crash is not None and crash.culprit() is None


def test_the_newest_request_is_the_culprit() -> None:
    crash = crashes.read_crash_record(write_record(record(10_000, (TV, 1_000, 2), (PHONE, 9_990, 1), ("", 5_000, 1))))
    assert crash is not None and crash.signal == 11 and len(crash.in_flight) == 3
    culprit = crash.culprit()
    assert culprit is not None and culprit.fingerprint == keys.key_fingerprint(PHONE) and not culprit.streaming


def test_a_key_that_crashes_it_twice_within_a_minute_is_refused(tmp_path: Path) -> None:
    auth = keys.Auth(enabled=True, source="stored", keys=(TV,))
    keys.write_named_keys(tmp_path, {"phone": PHONE})
    names = keys.key_names(auth, tmp_path)
    out = io.StringIO()
    now = 1_700_000_000.0
    write_record(record(int(now * 1000), (TV, int(now * 1000) - 5000, 2), (PHONE, int(now * 1000) - 10, 1)))
    assert crashes.account_for_last_crash(names, out, now) is not None
    assert "SIGSEGV with 2 request(s) in flight" in out.getvalue() and "the key 'phone'" in out.getvalue()
    assert not os.path.exists(paths.runtime_file(paths.CRASH_RECORD))  # read once: never counted twice
    assert crashes.account_for_last_crash(names, out, now + 1) is None
    assert keys.refused_keys(now) == {}  # once is not enough
    later = now + 40
    write_record(record(int(later * 1000), (PHONE, int(later * 1000) - 10, 1)))
    crashes.account_for_last_crash(names, out, later)
    assert "the key 'phone' crashed llama-server twice within 60 s: that key is refused" in out.getvalue()
    assert PHONE not in out.getvalue() and TV not in out.getvalue()  # named, never shown
    refused = keys.refused_keys(later)
    assert refused == {keys.key_fingerprint(PHONE): int(later) + crashes.REFUSE_SECONDS}
    # llama-server's key file marks it, and only it (patch 0024); a rewrite (`llmpi keys add`) keeps the mark
    lines = keys.canonical([TV, PHONE], refused).splitlines()
    assert lines == [TV, f"!{int(later) + crashes.REFUSE_SECONDS} {PHONE}"]
    assert keys.refused_keys(later + crashes.REFUSE_SECONDS + 1) == {}  # and it expires


def test_crashes_a_minute_apart_or_without_a_key_refuse_nobody() -> None:
    history = [(0.0, "abc"), (61.0, "abc"), (62.0, "0"), (63.0, "0"), (64.0, "")]
    assert not crashes.to_refuse(history, "abc")
    assert not crashes.to_refuse(history, "0") and not crashes.to_refuse(history, "")
    assert crashes.to_refuse([*history, (100.0, "abc")], "abc")


def test_the_ollama_door_reads_the_refusal_from_the_same_file(tmp_path: Path) -> None:
    from llmpi.ollama.door import KeyFile

    path = tmp_path / "api_keys"
    path.write_text(keys.canonical([TV, PHONE], {keys.key_fingerprint(PHONE): 2_000_000_000}))
    key_file = KeyFile(path)
    assert key_file.current() == (TV,)  # a refused key is no key the door takes
    assert key_file.refused_until(PHONE) == 2_000_000_000 and key_file.refused_until(TV) == 0
