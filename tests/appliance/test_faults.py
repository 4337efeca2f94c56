"""Faults: a crashed server comes back by itself; a broken model is reported, not looped over; stop is clean.
More failures to start, and a stop during streams: test_hardening.py."""

from __future__ import annotations

import time
from pathlib import Path

import requests

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
    # supervisor retries 3 times (about 8 s of back-off), then the FATAL listener gives its verdict
    wait_for(
        lambda: "will not be started again until the problem is fixed" in extra_project.logs(),
        60,
        pause=1,
        what="the FATAL listener's verdict",
    )
    time.sleep(3)
    logs = extra_project.logs()
    assert "configuration error: the model file /data/models/broken.gguf does not exist" in logs
    assert "will not be started again until the problem is fixed" in logs
    c = extra_project.container()
    c.reload()
    assert c.status == "running" and c.attrs["RestartCount"] == 0, "no restart loop"
    assert extra_project.docker_health() != "healthy"
    wait_for(
        lambda: "llmpi refused to start" in _last_health_output(extra_project),
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


def _last_health_output(project: Project) -> str:
    c = project.container()
    c.reload()
    log = c.attrs["State"].get("Health", {}).get("Log") or []
    return str(log[-1]["Output"]) if log else ""


def test_loading_is_503_then_200_and_stop_is_clean(extra_project: Project) -> None:
    # a quarter of a CPU makes loading slow enough to be seen
    extra_project.files.append(HERE / "compose.slow.yaml")
    extra_project.up()
    seen: list[int] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            status = extra_project.health()
        except requests.RequestException:
            time.sleep(0.05)
            continue
        seen.append(status)
        if status == 200:
            break
        time.sleep(0.05)
    assert seen and seen[-1] == 200, seen
    assert 503 in seen, f"never saw 'loading' (statuses: {sorted(set(seen))})"
    assert set(seen) <= {503, 200}

    started = time.monotonic()
    extra_project.compose("stop", "llmpi")
    took = time.monotonic() - started
    c = extra_project.container()
    c.reload()
    assert c.status == "exited"
    assert c.attrs["State"]["ExitCode"] == 0
    assert took < 45, f"stop took {took:.1f}s, longer than the grace period"
