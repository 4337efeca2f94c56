"""Several boards, one model (issue 13): a head and two workers of the real image, on a compose network of their
own (no worker port reaches the host), talking llama.cpp RPC through spiped. The memory limits are such that the
embedded model does not fit the head alone but fits the three."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from tests.appliance.cluster_helpers import (
    ENV,
    HEAD_MEMORY,
    OVERRIDE,
    PROFILES,
    PROMPTS,
    SECRET,
    WORKER_MEMORY,
    completions,
    container,
    in_head,
    one_board,
    service_logs,
)
from tests.appliance.replies import assert_says_something
from tests.compose_helpers import ARTIFACTS, COMPOSE_FILE, Project, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(appliance_image: str) -> Iterator[Project]:
    project = Project(f"llmpi-test-cluster-{os.getpid()}", env=dict(ENV), files=[COMPOSE_FILE, OVERRIDE])
    try:
        project.up()
        project.wait_healthy(300)
        yield project
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        for service in ("llmpi", "worker1", "worker2", "wronghead", "oldworker", "oldhead"):
            (ARTIFACTS / f"{project.name}-{service}.log").write_text(service_logs(project, service))
        project.compose(*PROFILES, "down", "-v", "--remove-orphans", "--timeout", "10", check=False)


@pytest.fixture(scope="module")
def key(cluster: Project) -> str:
    return cluster.stored_key()


def test_the_head_alone_refuses_with_its_numbers(appliance_image: str) -> None:
    """The same head without workers: the model does not fit its memory, and the refusal says so before loading."""
    done = subprocess.run(
        ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "python3",
         "-e", f"LLMPI_MEMORY_LIMIT={HEAD_MEMORY}", "-e", "LLMPI_MEMORY_RESERVE=0", "-e", "LLMPI_PARALLEL=1",
         "-e", "LLMPI_CTX_SIZE=2048", appliance_image, "-m", "llmpi.process.launcher"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 78, done.stdout + done.stderr
    assert "does not fit in memory" in done.stderr, done.stderr


def test_the_layers_are_split_across_the_three_boards(cluster: Project) -> None:
    logs = service_logs(cluster, "llmpi")
    assert "cluster of 3 boards" in logs, logs
    shares = {
        board: int(n)
        for board, n in re.findall(r"(this board \(head\)|worker\d:50052)(?: \([^)]*\))?: (\d+) layers, needs ", logs)
    }
    assert set(shares) == {"this board (head)", "worker1:50052", "worker2:50052"}, logs
    assert sum(shares.values()) == 18 and all(n > 0 for n in shares.values()), shares
    exec_line = next(line for line in logs.splitlines() if line.startswith("llmpi: exec "))
    assert "--rpc 127.0.0.1:51000,127.0.0.1:51002" in exec_line
    assert f"--tensor-split {shares['worker1:50052']},{shares['worker2:50052'] + 1}" in exec_line
    assert "--override-tensor ^(token_embd|output)[.]weight$=CPU" in exec_line
    for worker in ("worker1", "worker2"):  # each worker holds its layers (and the last no copy of the embeddings)
        assert rpc_server_rss_mib(cluster, worker) < int(WORKER_MEMORY.rstrip("M")), worker
    assert "--no-repack" in exec_line and "--fit off" in exec_line
    for worker in ("worker1", "worker2"):
        text = service_logs(cluster, worker)
        assert "Accepted client connection" in text, text  # the head's llama-server holds the layers there
        assert "llmpi worker: " in text and " threads, " in text, text


RSS = """
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if open(f"/proc/{pid}/comm").read().strip() == "ggml-rpc-server":
            print(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")))
    except OSError:
        pass
"""


def rpc_server_rss_mib(project: Project, service: str) -> float:
    """Resident memory of a worker's ggml-rpc-server, in MiB."""
    out = project.compose("exec", "-T", service, "python3", "-c", RSS).stdout.split()
    assert out, f"no ggml-rpc-server in {service}"
    return int(out[0]) / 1024


def test_greedy_output_is_the_same_as_on_one_board(cluster: Project, key: str) -> None:
    """Every layer computes from the same (not repacked) weights on whichever board holds it, so the cluster's
    greedy text is one board's with --no-repack, token for token (docs/cluster.md: what differs with repacking)."""
    split = completions(cluster, 8080, key)
    plain = one_board(cluster, 8099, repack=False)
    repacked = one_board(cluster, 8098, repack=True)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster-identical.json").write_text(
        json.dumps(
            {"prompts": PROMPTS, "cluster": split, "one_board_no_repack": plain, "one_board": repacked}, indent=1
        )
    )
    assert all(text.strip() for text in split), split
    assert split == plain


def test_openai_streaming_and_metrics_on_the_head(cluster: Project, key: str) -> None:
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=key, max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=16, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).strip(), pieces
    metrics = requests.get(f"{cluster.url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert metrics.status_code == 200 and "llamacpp:tokens_predicted_total" in metrics.text
    assert requests.get(f"{cluster.url}/metrics", timeout=10).status_code == 401


HELLO_PROBE = """
import json, socket, struct
hello = bytes([14]) + struct.pack("<Q", 24) + bytes(24)
got, error = b"", ""
s = socket.create_connection(("{host}", {port}), timeout=5)
s.settimeout(5)
try:
    s.sendall(hello)
    while len(got) < 4096:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
except OSError as e:
    error = type(e).__name__
print(json.dumps({{"reply": got.hex(), "error": error}}))
"""


def hello_reply(project: Project, code: str) -> bytes:
    return bytes.fromhex(json.loads(in_head(project, code, timeout=30).strip().splitlines()[-1])["reply"])


def test_a_worker_answers_nothing_without_the_secret(cluster: Project, key: str) -> None:
    """A raw RPC HELLO to a worker's port gets no HELLO answer (only spiped's handshake bytes, then the connection
    closes); through a spiped end with another key, not a byte. spiped connects to ggml-rpc-server when a peer
    connects, before the handshake, but passes nothing on unless the handshake proves the secret: the head,
    connected all along, keeps serving."""
    raw = hello_reply(cluster, HELLO_PROBE.format(host="worker1", port=50052))
    assert len(raw) <= 64 and not raw.startswith((28).to_bytes(8, "little")), raw.hex()  # HELLO's answer: 28 bytes
    wrong = (
        "import subprocess, time\n"
        "open('/tmp/wrong.key', 'w').write('x' * 43)\n"
        "p = subprocess.Popen(['spiped', '-F', '-e', '-s', '[127.0.0.1]:52000', '-t', 'worker1:50052', '-k', "
        "'/tmp/wrong.key'])\n"
        # until spiped listens on 127.0.0.1:52000 (0x0100007F:CB20, state 0A in /proc/net/tcp), at most 10 s
        "for _ in range(200):\n"
        "    if any(l.split()[1:4:2] == ['0100007F:CB20', '0A'] for l in open('/proc/net/tcp').readlines()[1:]):\n"
        "        break\n"
        "    time.sleep(0.05)\n"
        "else:\n"
        "    raise SystemExit('spiped never listened on 127.0.0.1:52000')\n"
        + HELLO_PROBE.format(host="127.0.0.1", port=52000)
        + "p.terminate()\n"
    )
    assert hello_reply(cluster, wrong) == b""
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=key, max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert_says_something(reply, max_tokens=4)


def health_output(c: Any) -> str:
    c.reload()
    log = (c.attrs["State"].get("Health") or {}).get("Log") or []
    return str(log[-1]["Output"]) if log else ""


def test_a_head_with_another_secret_waits_and_says_why(cluster: Project) -> None:
    cluster.compose("--profile", "wrong", "up", "-d", "--no-build", "wronghead")
    try:
        head = container(cluster, "wronghead")
        wait_for(lambda: "cluster secret differs" in health_output(head), 90, 1, "the wrong head's health log")
        assert "waiting for worker worker1:50052" in service_logs(cluster, "wronghead")
        assert SECRET not in service_logs(cluster, "wronghead") and ENV["TEST_WRONG_SECRET"] not in service_logs(
            cluster, "wronghead"
        )
    finally:
        cluster.compose("--profile", "wrong", "rm", "-sf", "wronghead", check=False)


def test_a_worker_of_another_protocol_version_is_refused(cluster: Project) -> None:
    cluster.compose("--profile", "old", "up", "-d", "--no-build", "oldworker", "oldhead")
    try:
        head = container(cluster, "oldhead")
        wait_for(lambda: "refused" in health_output(head), 90, 1, "the refusal in the old head's health log")
        reason = health_output(head)
        assert "oldworker:50052 runs RPC protocol 6.9.0, this head 7.0.0" in reason, reason
        assert "configuration error" in service_logs(cluster, "oldhead")
    finally:
        cluster.compose("--profile", "old", "rm", "-sf", "oldworker", "oldhead", check=False)


def test_a_worker_gone_while_idle_is_reconnected_before_a_request_finds_out(cluster: Project, key: str) -> None:
    """A worker restarts while nobody asks anything: the health check sees the head's connection to it closed,
    llama-server restarts, waits for the worker and reloads, and the next request is answered."""

    def said(text: str) -> int:
        return service_logs(cluster, "llmpi").count(text)

    waits, answers = said("waiting for worker worker1:50052"), said("every worker answers")
    worker = container(cluster, "worker1")
    worker.kill()
    wait_for(lambda: said("waiting for worker worker1:50052") > waits, 60, 1, "the head to notice the loss")
    worker.start()
    wait_for(lambda: said("every worker answers") > answers, 120, 1, "the head to reconnect")
    cluster.wait_healthy(300)
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=key, max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert_says_something(reply, max_tokens=4)


def test_a_worker_lost_mid_stream_then_back(cluster: Project, key: str) -> None:
    """The stream ends with an error within seconds; the head waits for the worker (unhealthy, saying which), and
    serves again by itself when the worker is back."""
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=key, max_retries=0, timeout=60)
    stream = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        max_tokens=900,
        stream=True,
    )
    worker = container(cluster, "worker2")
    received, killed_at, error = 0, 0.0, None
    try:
        for _ in stream:
            received += 1
            if received == 3:
                worker.kill()
                killed_at = time.monotonic()
    except Exception as e:  # openai.APIError, or httpx's RemoteProtocolError as it is
        error = e
    ended = time.monotonic() - killed_at
    assert killed_at and error is not None, f"the stream ended without an error after {received} chunks"
    assert ended < 30, ended
    wait_for(
        lambda: "waiting for worker worker2:50052" in service_logs(cluster, "llmpi"),
        60,
        1,
        "the head to say which worker",
    )
    code, out = cluster.exec(["python3", "-m", "llmpi.process.healthcheck"])
    assert code == 1 and "waiting for worker worker2:50052" in out, out
    worker.reload()
    restarted_by_docker = worker.status == "running"
    if not restarted_by_docker:
        worker.start()
    back = time.monotonic()
    cluster.wait_healthy(300)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster-recovery.json").write_text(
        json.dumps(
            {
                "stream_error_after_kill_s": round(ended, 2),
                "error": repr(error)[:300],
                "worker_restarted_by_docker": restarted_by_docker,
                "serving_again_after_worker_start_s": round(time.monotonic() - back, 1),
            }
        )
    )
    reply = openai.OpenAI(
        base_url=f"{cluster.url}/v1", api_key=key, max_retries=0, timeout=120
    ).chat.completions.create(model="any", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert reply.choices[0].message.content
