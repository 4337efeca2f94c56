"""Shared fairly and accounted (issue 24; patch 0027, llmpi.cli.keys, llmpi.usage): keys take turns for the slots
(a high-priority key first), work counts where it is spent (prompts × n against the queue), a key's daily tokens
answered 429 with Retry-After once spent, the usage per key in /metrics and `llmpi keys usage` equal to what the
responses' `usage` fields add up to, kept across a restart, and an access log line per request with the key's name,
never a key or a prompt."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
import requests

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


def deferred(project: Project, key: str) -> int:
    return int(metrics(project, key).get("llamacpp:requests_deferred", 0))


def add_key(project: Project, name: str, *options: str) -> str:
    code, out = project.exec(["llmpi", "keys", "add", name, *options])
    assert code == 0, out
    return out.strip()


def long_chat(tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True}  # fmt: skip


def stream_times(url: str, key: str, body: dict[str, Any], out: dict[str, Any], first: threading.Event) -> None:
    """A streamed chat: when its first token came and when it ended (perf_counter)."""
    try:
        with requests.post(f"{url}/v1/chat/completions", json={**body, "stream": True}, headers=headers(key),
                           stream=True, timeout=300) as r:  # fmt: skip
            out["status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith(b"data: ") and b'"content"' in line and "first" not in out:
                    out["first"] = time.perf_counter()
                    first.set()
            out["end"] = time.perf_counter()
    except requests.RequestException as e:
        out["failed"] = f"{type(e).__name__}: {e}"
    first.set()


def whole_chat(url: str, key: str, body: dict[str, Any], done: list[float], results: list[Any]) -> None:
    try:
        r = requests.post(f"{url}/v1/chat/completions", json=body, headers=headers(key), timeout=300)
        results.append(r.status_code)
    except requests.RequestException as e:
        results.append(f"{type(e).__name__}: {e}")
    done.append(time.perf_counter())


def access_lines(logs: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in logs.splitlines() if line.startswith('{"type":"access"')]


def test_keys_take_turns_and_a_high_priority_key_goes_first(extra_project: Project) -> None:
    """Two slots; the laptop's key queues 16 long requests; then the kitchen's key and a high-priority key (a voice
    assistant) each send a short one: the high-priority one gets the next free slot, the kitchen's the one after
    (not the laptop's fourteen waiting), and the access log has one line per request with its key's name."""
    extra_project.env.update({"LLMPI_PARALLEL": "2", "LLMPI_QUEUE_MAX": "16", "LLMPI_MAX_TOKENS": "400"})
    extra_project.up()
    extra_project.wait_healthy()
    laptop, kitchen = add_key(extra_project, "laptop"), add_key(extra_project, "kitchen")
    assistant = add_key(extra_project, "assistant", "--priority", "high")
    url = extra_project.url

    # the laptop's first request streams; its others are sent once it has begun, so that its two slots are freed
    # at different times
    first_a: dict[str, Any] = {}
    begun = threading.Event()
    threads = [threading.Thread(target=stream_times, args=(url, laptop, long_chat(96), first_a, begun))]
    threads[0].start()
    assert begun.wait(120) and "failed" not in first_a, first_a
    done: list[float] = []
    statuses: list[Any] = []
    for _ in range(15):
        threads.append(threading.Thread(target=whole_chat, args=(url, laptop, long_chat(96), done, statuses)))
        threads[-1].start()
    wait_for(lambda: deferred(extra_project, laptop) == 14, 60, pause=0.05, what="the laptop's 14 requests waiting")

    kitchen_out: dict[str, Any] = {}
    assistant_out: dict[str, Any] = {}
    events = [threading.Event(), threading.Event()]
    short_threads = [threading.Thread(target=stream_times, args=(url, kitchen, SHORT, kitchen_out, events[0]))]
    short_threads[0].start()
    wait_for(lambda: deferred(extra_project, laptop) == 15, 60, pause=0.05, what="the kitchen's request waiting")
    short_threads.append(threading.Thread(target=stream_times, args=(url, assistant, SHORT, assistant_out, events[1])))
    short_threads[1].start()
    for t in short_threads + threads:
        t.join(300)
    assert kitchen_out.get("status") == 200 and assistant_out.get("status") == 200, (kitchen_out, assistant_out)
    assert statuses == [200] * 15 and first_a.get("status") == 200, statuses

    a_ends = sorted([*done, first_a["end"]])
    before_kitchen = sum(1 for t in a_ends if t < kitchen_out["first"])
    print(f"kitchen's first token after {before_kitchen} of the laptop's 16 requests ended; the laptop's queue "
          f"ended {a_ends[-1] - kitchen_out['first']:.1f} s after it")  # fmt: skip
    # the assistant (high priority) took the first slot freed; the kitchen the one after the laptop's next, not the
    # laptop's remaining fourteen
    assert assistant_out["first"] < kitchen_out["first"]
    assert before_kitchen <= 2, before_kitchen
    assert kitchen_out["end"] < a_ends[-3]

    logs = extra_project.logs()
    lines = access_lines(logs)
    by_key = Counter(line["key"] for line in lines if line["endpoint"] == "/v1/chat/completions")
    assert by_key == {"laptop": 16, "kitchen": 1, "assistant": 1}, by_key
    assert all(line["status"] == 200 and line["model"] for line in lines), lines
    assert {line["completion_tokens"] for line in lines if line["key"] == "laptop"} == {96}
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
