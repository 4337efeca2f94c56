"""What the cluster tests share (tests/appliance/test_cluster.py, tests/lan/test_lan_cluster.py, the arm64 worker in
tests/arm64/test_arm64.py): the boards' memory and secrets, whether this CPU's backend needs more on the head, a
service's log as text, and greedy answers from inside the head. Test modules import from here, never from each
other."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import docker

from tests.compose_helpers import ROOT, Project

# An AMX CPU's backend takes 256 MiB more on the head (llmpi's fit: AMX_WORK).
AMX = " amx_tile" in Path("/proc/cpuinfo").read_text()
# the embedded Gemma 3 270M's layers are about 5 MB each: a worker of 100 MB holds about a third of them
WORKER_MEMORY = "100M"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def service_log(project: Project, service: str, *compose_args: str) -> str:
    """A service's log as text (compose writes terminal control sequences into it even with --no-color);
    `compose_args` go before `logs` (the profiles that name the service, for one in a profile)."""
    out = project.compose(*compose_args, "logs", "--no-color", "--no-log-prefix", service, check=False).stdout
    return ANSI.sub("", out)


OVERRIDE = ROOT / "tests" / "appliance" / "compose.cluster.yaml"
SECRET = secrets.token_urlsafe(32)
# the embedded Gemma 3 270M (253 MB: 158 MB of token embeddings, which stay on the head, and 18 layers of about
# 5 MB) with one slot of 2048 tokens: the head alone needs about 300 MB; with these limits it holds about a third
# of the layers, each worker about as many (AMX, WORKER_MEMORY: tests/appliance/cluster_helpers.py).
HEAD_MEMORY = f"{240 + (256 if AMX else 0)}M"
PROMPTS = [
    "The capital of France is",
    "Here is a list of three fruits:",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
]
TOKENS = 48
ENV = {
    "TEST_CLUSTER_SECRET": SECRET,
    "TEST_WRONG_SECRET": secrets.token_urlsafe(32),
    "TEST_HEAD_MEMORY": HEAD_MEMORY,
    "TEST_WORKER_MEMORY": WORKER_MEMORY,
}
PROFILES = ("--profile", "wrong", "--profile", "old")


def container(project: Project, service: str) -> Any:
    found = docker.from_env().containers.list(
        all=True,
        filters={"label": [f"com.docker.compose.project={project.name}", f"com.docker.compose.service={service}"]},
    )
    assert found, f"no {service} container in {project.name}"
    return found[0]


def service_logs(project: Project, service: str) -> str:
    """A service's log as text, the services of the test's profiles too."""
    return service_log(project, service, *PROFILES)


def in_head(project: Project, code: str, timeout: float = 120) -> str:
    """Run Python inside the head's container (on the boards' network) and return what it printed."""
    out = project.compose(
        "exec", "-T", "llmpi", "timeout", str(int(timeout)), "python3", "-c", code, timeout=timeout + 30
    )
    return out.stdout


def completions(project: Project, port: int, key: str | None, prompts: list[str] = PROMPTS) -> list[str]:
    """Greedy continuations of PROMPTS from a server inside the head's container, without the prompt cache."""
    code = f"""
import json, urllib.request
out = []
for prompt in {prompts!r}:
    body = json.dumps({{"prompt": prompt, "n_predict": {TOKENS}, "temperature": 0, "top_k": 1, "seed": 1,
                        "cache_prompt": False}}).encode()
    req = urllib.request.Request("http://127.0.0.1:{port}/completion", body, {{"Content-Type": "application/json"}})
    if {key!r}:
        req.add_header("Authorization", "Bearer " + {key!r})
    out.append(json.load(urllib.request.urlopen(req, timeout=120))["content"])
print(json.dumps(out))
"""
    return list(json.loads(in_head(project, code, timeout=600).strip().splitlines()[-1]))


def first_token_logprobs(project: Project, port: int, key: str | None, prompts: list[str] = PROMPTS) -> list[Any]:
    """For each prompt, the 5 likeliest first tokens with their log-probabilities: [[id, logprob], ...]."""
    code = f"""
import json, urllib.request
out = []
for prompt in {prompts!r}:
    body = json.dumps({{"prompt": prompt, "n_predict": 1, "n_probs": 5, "temperature": 0, "cache_prompt": False}})
    url = "http://127.0.0.1:{port}/completion"
    req = urllib.request.Request(url, body.encode(), {{"Content-Type": "application/json"}})
    if {key!r}:
        req.add_header("Authorization", "Bearer " + {key!r})
    first = json.load(urllib.request.urlopen(req, timeout=300))["completion_probabilities"][0]
    out.append([[t["id"], t["logprob"]] for t in first["top_logprobs"]])
print(json.dumps(out))
"""
    return list(json.loads(in_head(project, code, timeout=900).strip().splitlines()[-1]))


def one_board(project: Project, port: int, repack: bool, prompts: list[str] = PROMPTS, probe: Any = None) -> list[Any]:
    """The same model on one board: a plain llama-server in the head's container, same slot and context."""
    argv = ["llama-server", "-m", "/opt/llmpi/models/default.gguf", "--host", "127.0.0.1", "--port", str(port),
            "-c", "2048", "-np", "1", "--no-kv-unified", "-t", "2"] + ([] if repack else ["--no-repack"])  # fmt: skip
    container(project, "llmpi").exec_run(argv, detach=True, user="llmpi")
    wait = (
        "import time, urllib.request\n"
        "for _ in range(240):\n"
        "    try:\n"
        f"        urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=2); break\n"
        "    except Exception: time.sleep(0.5)\n"
    )
    in_head(project, wait)
    try:
        return list((probe or completions)(project, port, None, prompts))
    finally:
        container(project, "llmpi").exec_run(["pkill", "-f", f"--port {port}"], user="llmpi")
