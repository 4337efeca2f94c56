"""If llama-server dies anyway (issue 23; patches 0023, 0024, llmpi.process.crashes): the requests in flight get a
clean error, a 503 or an error event at the end of a stream begun, never a reset; the server is back in seconds;
the log names the key of the newest request, never shows it; a key whose requests crash it twice within a minute is
refused with a 403 that says until when, on port 8080 and on the Ollama port, while the other keys go on. The
crash is a SIGSEGV sent to llama-server, the signal a request that crashed it would raise."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests

from tests.compose_helpers import KEY_RE, Project, wait_for

from .test_server_limits import server_pid

pytestmark = pytest.mark.security

LONG = {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 400, "ignore_eos": True}


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def in_slots(project: Project, key: str) -> int:
    r = requests.get(f"{project.url}/metrics", headers=headers(key), timeout=10)
    values = dict(line.split()[:2] for line in r.text.splitlines() if line.startswith("llamacpp:requests_processing"))
    return int(float(values.get("llamacpp:requests_processing", "0")))


def stream_until_it_ends(url: str, key: str, started: threading.Event, out: dict[str, Any]) -> None:
    """A streamed chat: the data lines it got, and how it ended (an error event, or a reset)."""
    try:
        with requests.post(f"{url}/v1/chat/completions", json={**LONG, "stream": True}, headers=headers(key),
                           stream=True, timeout=120) as r:  # fmt: skip
            out["status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith(b"data: "):
                    started.set()
                    out.setdefault("events", []).append(line[6:])
    except requests.RequestException as e:
        out["failed"] = f"{type(e).__name__}: {e}"
    started.set()


def whole_answer(url: str, key: str, out: dict[str, Any]) -> None:
    try:
        r = requests.post(f"{url}/v1/chat/completions", json=LONG, headers=headers(key), timeout=120)
        out["status"], out["body"] = r.status_code, r.text
    except requests.RequestException as e:
        out["failed"] = f"{type(e).__name__}: {e}"


def crash_with(project: Project, generated: str, newest: str) -> tuple[dict[str, Any], dict[str, Any], float]:
    """A stream with the generated key and then a whole answer with `newest` in flight, then a SIGSEGV: what each got,
    and the seconds until /health answered 200 again."""
    pid = server_pid(project)
    stream: dict[str, Any] = {}
    whole: dict[str, Any] = {}
    started = threading.Event()
    t1 = threading.Thread(target=stream_until_it_ends, args=(project.url, generated, started, stream))
    t1.start()
    assert started.wait(120) and "failed" not in stream, stream
    t2 = threading.Thread(target=whole_answer, args=(project.url, newest, whole))
    t2.start()
    wait_for(lambda: in_slots(project, generated) == 2, 60, pause=0.1, what="both requests in their slots")
    code, out = project.exec(["sh", "-c", f"kill -SEGV {pid}"])
    assert code == 0, out
    killed = time.monotonic()
    t1.join(60)
    t2.join(60)
    wait_for(lambda: project.health() == 200, 120, pause=0.1, what="llama-server back")
    back = time.monotonic() - killed
    assert server_pid(project) != pid
    return stream, whole, back


@pytest.mark.contract
def test_a_crash_answers_the_requests_in_flight_and_a_key_that_crashes_it_twice_is_refused(
    extra_project: Project,
) -> None:
    extra_project.env.update({"LLMPI_MAX_TOKENS": "400", "LLMPI_PARALLEL": "2"})
    extra_project.up()
    extra_project.wait_healthy()
    generated = extra_project.stored_key()
    code, phone = extra_project.exec(["llmpi", "keys", "add", "phone"])
    assert code == 0, phone
    phone = phone.strip()

    stream, whole, back = crash_with(extra_project, generated, phone)
    # the stream began: it ends with an error event, not a reset
    assert stream["status"] == 200 and "failed" not in stream, stream
    last = json.loads(stream["events"][-1])
    assert "stopped unexpectedly" in last["error"]["message"], stream["events"][-3:]
    # the whole answer had not begun: a 503 that says to retry
    assert whole.get("status") == 503 and "stopped unexpectedly" in whole["body"], whole
    print(f"llama-server back {back:.1f} s after the crash")
    logs = extra_project.logs()
    assert "killed by SIGSEGV with 2 request(s) in flight" in logs and "the newest came with the key 'phone'" in logs

    # the same key's request in flight at a second crash within a minute: that key is refused, the others are not
    crash_with(extra_project, generated, phone)
    logs = extra_project.logs()
    assert "the key 'phone' crashed llama-server twice within 60 s: that key is refused for 10 minutes" in logs
    assert phone not in logs and generated not in logs and not KEY_RE.findall(logs)
    r = requests.get(f"{extra_project.url}/v1/models", headers=headers(phone), timeout=30)
    assert r.status_code == 403 and "refused until" in r.json()["error"]["message"], r.text
    r = requests.get(f"{extra_project.ollama_url}/api/tags", headers=headers(phone), timeout=30)
    assert r.status_code == 403 and "refused until" in r.text, r.text
    assert requests.get(f"{extra_project.url}/v1/models", headers=headers(generated), timeout=30).status_code == 200
    # `llmpi keys add` rewrites the key file: the refusal stays
    assert extra_project.exec(["llmpi", "keys", "add", "tv"])[0] == 0
    r = requests.get(f"{extra_project.url}/v1/models", headers=headers(phone), timeout=30)
    assert r.status_code == 403, r.text
