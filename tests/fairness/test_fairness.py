"""Shared fairly and accounted (issue 24; patch 0027, llmpi.cli.keys, llmpi.usage): keys take turns for the slots
(a high-priority key first), work counts where it is spent (prompts × n against the queue), a key's daily tokens
answered 429 with Retry-After once spent, the usage per key in /metrics and `llmpi keys usage` equal to what the
responses' `usage` fields add up to, kept across a restart, and an access log line per request with the key's name,
never a key or a prompt."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
import requests

from benchlib.compose import ANSI
from tests.compose_helpers import KEY_RE, Project, wait_for

pytestmark = pytest.mark.fairness

LONG_PROMPT = "Tell a long story about a lighthouse keeper."  # never in the access log
SHORT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0, "ignore_eos": True}


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def metrics(project: Project, key: str) -> dict[str, float]:
    r = requests.get(f"{project.url}/metrics", headers=headers(key), timeout=10)
    assert r.status_code == 200, r.text
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def admitted(project: Project, key: str, ended: int) -> int:
    """Requests the server has taken: waiting, in a slot, or `ended` (counted before the scrape, so that one ending
    between the two is never counted twice)."""
    m = metrics(project, key)
    return ended + int(m.get("llamacpp:requests_deferred", 0)) + int(m.get("llamacpp:requests_processing", 0))


def add_key(project: Project, name: str, *options: str) -> str:
    code, out = project.exec(["llmpi", "keys", "add", name, *options])
    assert code == 0, out
    return out.strip()


def long_chat(tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True}  # fmt: skip


def whole_chat(url: str, key: str, body: dict[str, Any], done: list[float], results: list[Any]) -> None:
    try:
        r = requests.post(f"{url}/v1/chat/completions", json=body, headers=headers(key), timeout=300)
        results.append(r.status_code)
    except requests.RequestException as e:
        results.append(f"{type(e).__name__}: {e}")
    done.append(time.perf_counter())


def access_lines(logs: str) -> list[dict[str, Any]]:
    clean = (ANSI.sub("", line) for line in logs.splitlines())
    return [json.loads(line) for line in clean if line.startswith('{"type":"access"')]


def slot_times(line: dict[str, Any]) -> tuple[float, float, float]:
    """An access line's request: when it came, when it got its slot and when it ended (seconds, the server's clock;
    its line's time is the end, to the millisecond)."""
    end = dt.datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()
    came = end - line["duration_ms"] / 1000
    return came, came + line["queue_ms"] / 1000, end


def chat_lines(logs: str) -> list[dict[str, Any]]:
    """The access log's chat requests, in the order they ended."""
    return [line for line in access_lines(logs) if line["endpoint"] == "/v1/chat/completions"]


def turns_of(lines: list[dict[str, Any]]) -> list[tuple[float, float, float, str]]:
    """Each request's (came, got its slot, ended, key name), sorted by when it came."""
    return sorted((*slot_times(line), line["key"]) for line in lines)


def started_after(turns: list[tuple[float, float, float, str]], since: float) -> list[str]:
    """The keys of the requests that got a slot after `since`, in the order they got it."""
    return [key for _, started, _, key in sorted(turns, key=lambda t: t[1]) if started > since]


@pytest.mark.contract
def test_keys_take_turns_and_a_high_priority_key_goes_first(extra_project: Project) -> None:
    """Two slots; the laptop's key fills both with long requests and queues 14 more; then the kitchen's key and a
    high-priority key (a voice assistant) each send a short one: the high-priority one gets the first slot freed,
    the kitchen's the next (not the laptop's fourteen waiting before it), and the access log has one line per request
    with its key's name. Then keys holding as few slots go in turn: a tablet's request before the laptop's waiting
    ones, the laptop's key having been served before and the tablet's not."""
    # the devices are this test's threads, all from one address: more connections than one device may hold
    extra_project.env.update({"LLMPI_PARALLEL": "2", "LLMPI_QUEUE_MAX": "16", "LLMPI_MAX_TOKENS": "400",
                              "LLMPI_MAX_CONNECTIONS_PER_CLIENT": "64"})  # fmt: skip
    extra_project.up()
    extra_project.wait_healthy()
    laptop, kitchen = add_key(extra_project, "laptop"), add_key(extra_project, "kitchen")
    assistant = add_key(extra_project, "assistant", "--priority", "high")
    url = extra_project.url
    done: list[float] = []
    statuses: list[Any] = []

    def send(key: str, tokens: int) -> threading.Thread:
        body = SHORT if tokens == 0 else long_chat(tokens)
        thread = threading.Thread(target=whole_chat, args=(url, key, body, done, statuses))
        thread.start()
        return thread

    def taken() -> int:
        return admitted(extra_project, laptop, len(done))

    def wait_both_slots_busy(what: str) -> None:
        wait_for(lambda: metrics(extra_project, laptop).get("llamacpp:requests_processing") == 2, 60, pause=0.05,
                 what=what)  # fmt: skip

    # two long requests in the slots (the first slot is freed long after everything below is waiting), then 14
    # short ones waiting, then the kitchen's, then the assistant's
    threads = [send(laptop, 300), send(laptop, 200)]
    wait_both_slots_busy("the laptop's two long requests in the slots")
    threads += [send(laptop, 32) for _ in range(14)]
    # a connection after the burst gets a thread of its own at once (patch 0028): /health answers while none of
    # the laptop's requests has ended
    assert requests.get(f"{url}/health", timeout=30).status_code == 200 and not done, done
    wait_for(lambda: taken() == 16, 60, pause=0.05, what="the laptop's 16 requests taken",
             detail=lambda: f"taken: {taken()}, answered: {statuses}")  # fmt: skip
    threads.append(send(kitchen, 0))
    wait_for(lambda: taken() == 17, 60, pause=0.05, what="the kitchen's request taken")
    threads.append(send(assistant, 0))
    wait_for(lambda: taken() == 18, 60, pause=0.05, what="the assistant's request taken")
    for t in threads:
        t.join(300)
    assert statuses == [200] * 18, statuses

    logs = extra_project.logs()
    lines = chat_lines(logs)
    assert Counter(line["key"] for line in lines) == {"laptop": 16, "kitchen": 1, "assistant": 1}, lines
    assert all(line["status"] == 200 and line["model"] for line in lines), lines
    assert sorted(line["completion_tokens"] for line in lines if line["key"] == "laptop") == [32] * 14 + [200, 300]
    turns = turns_of(lines)
    k_came = next(came for came, _, _, key in turns if key == "kitchen")
    s_came = next(came for came, _, _, key in turns if key == "assistant")
    first_freed = min(end for _, _, end, _ in turns)
    after = started_after(turns, k_came)
    print(f"the kitchen came {first_freed - k_came:.2f} s and the assistant {first_freed - s_came:.2f} s before the "
          f"first slot was freed; who got a slot after the kitchen came: {after}")  # fmt: skip
    # both waited when the first slot was freed, behind the laptop's 14 (else this machine outran the test's setup)
    assert k_came < s_came < first_freed, turns
    # the assistant (high priority) took the first slot freed; the kitchen the next, freed by the assistant's short
    # answer: the laptop's key still held a slot (its 300-token request), the kitchen's none; then the laptop's 14
    assert after == ["assistant", "kitchen"] + ["laptop"] * 14, after

    # round robin: the kitchen now fills both slots and the laptop queues 4 more; a tablet's key sends one after them.
    # At the first slot freed neither holds a slot, and the laptop's key has been served, the tablet's not: the tablet
    # goes first, though the laptop's 4 waited longer
    tablet = add_key(extra_project, "tablet")
    ended = len(done)
    threads = [send(kitchen, 200), send(kitchen, 100)]
    wait_both_slots_busy("the kitchen's two requests in the slots")
    threads += [send(laptop, 32) for _ in range(4)]
    wait_for(lambda: taken() - ended == 6, 60, pause=0.05, what="the laptop's 4 requests taken")
    threads.append(send(tablet, 0))
    wait_for(lambda: taken() - ended == 7, 60, pause=0.05, what="the tablet's request taken")
    for t in threads:
        t.join(300)
    assert statuses == [200] * 25, statuses
    turns = turns_of(chat_lines(extra_project.logs())[18:])  # the 18 of the first part ended before these began
    t_came = next(came for came, _, _, key in turns if key == "tablet")
    assert t_came < min(end for _, _, end, _ in turns), turns  # the tablet waited when the first slot was freed
    after = started_after(turns, t_came)
    assert after == ["tablet"] + ["laptop"] * 4, after
    assert LONG_PROMPT not in logs and not KEY_RE.findall(logs)
    assert all(k not in logs for k in (laptop, kitchen, assistant))


def completion_usage(url: str, key: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> tuple[int, int]:
    r = requests.post(f"{url}{path}", json=body, headers=headers(key), timeout=120)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    return int(usage["prompt_tokens"]), int(usage["completion_tokens"])


def streamed_usage(url: str, key: str, body: dict[str, Any]) -> tuple[int, int]:
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    usage: dict[str, Any] = {}
    with requests.post(f"{url}/v1/chat/completions", json=body, headers=headers(key), stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if line.startswith(b"data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    return int(usage["prompt_tokens"]), int(usage["completion_tokens"])


def ledger_totals(project: Project) -> dict[str, Any]:
    code, out = project.exec(["llmpi", "keys", "usage", "--json"])
    assert code == 0, out
    return {name: k["total"] for name, k in json.loads(out)["keys"].items()}


@pytest.mark.contract
def test_work_counts_where_spent_daily_tokens_and_usage_that_survives_a_restart(extra_project: Project) -> None:
    extra_project.env.update({"LLMPI_PARALLEL": "2", "LLMPI_QUEUE_MAX": "8", "LLMPI_ACCESS_LOG": "file"})
    extra_project.up()
    extra_project.wait_healthy()
    url, generated = extra_project.url, extra_project.stored_key()

    # 64 prompts are 64 tasks: more than 2 slots and 8 waiting places can ever hold, refused whole before any starts
    many = {"prompt": [f"Count to {i}." for i in range(64)], "max_tokens": 4}
    r = requests.post(f"{url}/v1/completions", json=many, headers=headers(generated), timeout=60)
    assert r.status_code == 503, r.text
    assert "64 tasks" in r.json()["error"]["message"] and "at most 10" in r.json()["error"]["message"], r.text
    # nine fit (two run, seven wait) and are answered whole
    prompts = [f"Count to {i}." for i in range(9)]
    nine: dict[str, Any] = {"prompt": prompts, "max_tokens": 4, "temperature": 0}
    r = requests.post(f"{url}/v1/completions", json=nine, headers=headers(generated), timeout=120)
    assert r.status_code == 200 and len(r.json()["choices"]) == 9, r.text

    # a key with 500 tokens a day: the request after they are spent is a 429 that says when they come back
    kid = add_key(extra_project, "kid", "--daily-tokens", "500")
    spent = 0
    for _ in range(20):
        r = requests.post(f"{url}/v1/chat/completions", json=long_chat(60), headers=headers(kid), timeout=120)
        if r.status_code != 200:
            break
        spent += r.json()["usage"]["prompt_tokens"] + r.json()["usage"]["completion_tokens"]
    assert r.status_code == 429 and spent >= 500, (r.status_code, spent, r.text)
    assert int(r.headers["Retry-After"]) > 0
    assert "the key 'kid' has used its 500 tokens for today" in r.json()["error"]["message"], r.text
    assert "come back at" in r.json()["error"]["message"]
    tags = requests.get(f"{extra_project.ollama_url}/api/tags", headers=headers(generated), timeout=30).json()
    chat = {"model": tags["models"][0]["name"], "messages": [{"role": "user", "content": "hi"}], "stream": False}
    r = requests.post(f"{extra_project.ollama_url}/api/chat", json=chat, headers=headers(kid), timeout=60)
    assert r.status_code == 429 and "500 tokens for today" in r.text and r.headers.get("Retry-After"), r.text
    assert requests.post(f"{url}/v1/chat/completions", json=SHORT, headers=headers(generated),
                         timeout=60).status_code == 200  # fmt: skip

    # a known load from three named keys: chats, several prompts in one request, a stream with its usage
    one, two, three = (add_key(extra_project, n) for n in ("one", "two", "three"))
    expected: dict[str, list[int]] = {"one": [0, 0], "two": [0, 0], "three": [0, 0]}
    for name, key in (("one", one), ("one", one), ("two", two), ("three", three)):
        p, c = completion_usage(url, key, {**SHORT, "max_tokens": 5 + len(name)})
        expected[name][0] += p
        expected[name][1] += c
    p, c = completion_usage(url, two, {**nine, "prompt": prompts[:3]}, "/v1/completions")
    expected["two"][0] += p
    expected["two"][1] += c
    p, c = streamed_usage(url, three, long_chat(12))
    expected["three"][0] += p
    expected["three"][1] += c
    m = metrics(extra_project, generated)
    for name, (prompt, completion) in expected.items():
        assert m[f'llmpi_key_prompt_tokens_total{{key="{name}"}}'] == prompt, (name, m)
        assert m[f'llmpi_key_completion_tokens_total{{key="{name}"}}'] == completion, (name, m)
    assert m['llmpi_key_requests_total{key="one"}'] == 2 and m['llmpi_key_requests_total{key="three"}'] == 2
    before = ledger_totals(extra_project)
    for name, (prompt, completion) in expected.items():
        assert (before[name]["prompt_tokens"], before[name]["completion_tokens"]) == (prompt, completion), before
    assert before["kid"]["errors"] == 2 and before["default"]["errors"] == 1  # the 429s; the 64-prompt 503
    code, table = extra_project.exec(["llmpi", "keys", "usage"])
    assert code == 0 and "kid" in table and "since" in table, table
    print(table)  # the usage table after the test load (pytest -s)

    # the access log file: a line per request, by key name, never a key or a prompt
    code, log = extra_project.exec(["cat", "/data/logs/access.log"])
    assert code == 0, log
    lines = access_lines(log)
    assert Counter(line["key"] for line in lines)["one"] == 2 and Counter(line["key"] for line in lines)["two"] == 2
    assert not KEY_RE.findall(log) and LONG_PROMPT not in log and "Count to" not in log

    # the ledger is on the data volume: a restart keeps it
    extra_project.compose("restart", "llmpi")
    extra_project.wait_healthy()
    assert ledger_totals(extra_project) == before
