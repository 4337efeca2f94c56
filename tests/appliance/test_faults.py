"""Faults: a crashed server comes back by itself; a broken model is reported, not looped over; stop is clean.
More failures to start, and a stop during streams: test_hardening.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from tests.appliance.health_helpers import VERDICT, last_health_output, starts_before_giving_up
from tests.compose_helpers import Project, wait_for

HERE = Path(__file__).resolve().parent
KILL_SERVER = (
    "import os, signal\n"
    "for p in os.listdir('/proc'):\n"
    "    if p.isdigit() and open(f'/proc/{p}/comm').read().strip() == 'llama-server':\n"
    "        os.kill(int(p), signal.SIGKILL); print(p)\n"
)


def test_kill_9_of_llama_server_recovers(appliance: Project) -> None:
    code, out = appliance.exec(["python3", "-c", KILL_SERVER])
    assert code == 0 and out.strip(), out
    killed = int(out.split()[0])
    wait_for(lambda: appliance.health() != 200, 10, pause=0.05, what="the server to go down")
    appliance.wait_healthy(120)
    _, out = appliance.exec(["python3", "-c", KILL_SERVER.replace("os.kill(int(p), signal.SIGKILL); ", "")])
    assert int(out.split()[0]) != killed
    assert "llama-server' terminated by SIGKILL" in appliance.logs() or "terminated by SIGKILL" in appliance.logs()
    assert appliance.container().attrs["RestartCount"] == 0  # supervisor restarted it, not Docker


def test_missing_then_truncated_model(extra_project: Project) -> None:
    extra_project.env["LLMPI_MODEL"] = "/data/models/broken.gguf"
    extra_project.up()
    # supervisor retries 3 times (about 8 s of back-off), then the FATAL listener gives its verdict; each try is the
    # launcher's refusal, and none comes after the verdict
    refusal = "configuration error: the model file /data/models/broken.gguf does not exist"
    assert starts_before_giving_up(extra_project, refusal) >= 1
    assert VERDICT in extra_project.logs()
    assert extra_project.docker_health() != "healthy"
    wait_for(
        lambda: "llmpi refused to start" in last_health_output(extra_project),
        30,
        pause=1,
        what="the health check to report the reason",
    )

    # now a model cut short, as by an interrupted download: same clear refusal, named as such
    code, out = extra_project.exec(
        [
            "python3",
            "-c",
            "import os; os.makedirs('/data/models', exist_ok=True);"
            "src = open('/opt/llmpi/models/gemma-3-270m-q4_k_m.gguf', 'rb');"
            "open('/data/models/broken.gguf', 'wb').write(src.read(100_000_000))",
        ],
    )
    assert code == 0, out
    extra_project.compose("restart", "llmpi")
    wait_for(lambda: "is truncated" in extra_project.logs(), 60, what="the truncation refusal")
    assert "tensors need 253113024 bytes but the file has 100000000" in extra_project.logs()
    assert extra_project.docker_health() != "healthy"


def test_loading_is_503_then_200_and_stop_is_clean(extra_project: Project) -> None:
    """/health answers from the moment llama-server listens, which it does before it loads the model: 503 "Loading
    model" until the model is loaded, then 200.

    No fact outside llama-server can hold its load open, so the load is made long instead: a quarter of a CPU
    (compose.slow.yaml) stretches loading and warming up the embedded model to seconds, against one look at /health
    every 50 ms or so (the port is read once, not by `docker compose port` at each look): measured on 2 cores, 105
    answers of 503 in 9.4 s (40 in 2.2 s at full speed). What is asserted does not depend on the timing: every
    answer is a 503 that says "Loading model" or the final 200 "ok", in that order."""
    extra_project.files.append(HERE / "compose.slow.yaml")
    extra_project.up()
    url = f"{extra_project.url}/health"
    seen: list[tuple[int, str]] = []

    def healthy() -> bool:
        r = requests.get(url, timeout=5)
        seen.append((r.status_code, r.text))
        return r.status_code == 200

    wait_for(healthy, 300, pause=0.05, what="/health == 200")  # connection refused until it listens: not an answer
    statuses = [status for status, _ in seen]
    assert statuses[-1] == 200 and json.loads(seen[-1][1]) == {"status": "ok"}, seen[-1]
    assert 503 in statuses, f"never saw 'loading': the first answer was already {seen[0]}"
    assert statuses == [503] * (len(statuses) - 1) + [200], sorted(set(statuses))
    for _, body in seen[:-1]:
        error = json.loads(body)["error"]
        assert (error["code"], error["message"], error["type"]) == (503, "Loading model", "unavailable_error"), body

    started = time.monotonic()
    extra_project.compose("stop", "llmpi")
    took = time.monotonic() - started
    c = extra_project.container()
    c.reload()
    assert c.status == "exited"
    assert c.attrs["State"]["ExitCode"] == 0
    assert took < 45, f"stop took {took:.1f}s, longer than the grace period"
