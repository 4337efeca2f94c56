"""Models by name (issue 12), through compose with the real image, against the hub stand-in on the Docker bridge:
pull at start (progress on /health, then served), the quant chosen by the fit, a restart mid-download continues,
refusals before and after the download leave nothing, several models by name through the router with the
least recently used one unloaded, and `llmpi models` while a stream runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from openai import OpenAI

from tests.appliance.replies import assert_says_something
from tests.compose_helpers import ROOT, Project, compose_env, say, wait_for
from tests.ggufmaker import llama_like
from tests.hubstub import Hub, Repo

pytestmark = pytest.mark.models

EMBEDDED = "/opt/llmpi/models/gemma-3-270m-q4_k_m.gguf"
# the board these tests plan for: the real Gemma file (253 MB) is the only quant that fits; the bigger ones are
# listed by the stand-in at realistic sizes but hold only a header (they are never downloaded)
LIMIT = "2G"


def bridge_address() -> str:
    """The host's address on Docker's default bridge (docker0): containers reach the stand-in hub there."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=True)
    return out.stdout.split(" inet ", 1)[1].split("/", 1)[0]


@pytest.fixture(scope="module")
def gemma(appliance_image: str) -> bytes:
    """The embedded Gemma 3 270M GGUF, read out of the image (a real model for the stand-in hub to serve)."""
    out = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "cat", appliance_image, EMBEDDED], capture_output=True, check=True
    )
    return out.stdout


@pytest.fixture
def hub(gemma: bytes, tmp_path: Path) -> Iterator[Hub]:
    header = gemma[: 8 << 20]  # enough for the fit; the file is never downloaded
    with Hub(host=bridge_address()) as h:
        h.repos["test/Gemma-GGUF"] = Repo(
            {"gemma-Q2_K.gguf": gemma, "gemma-Q4_K_M.gguf": header, "gemma-Q8_0.gguf": header},
            listed_sizes={"gemma-Q4_K_M.gguf": 3_000_000_000, "gemma-Q8_0.gguf": 6_000_000_000},
        )
        h.repos["test/Second-GGUF"] = Repo({"second-Q4_K_M.gguf": gemma}, sha="1" * 40)
        h.repos["test/Third-GGUF"] = Repo({"third-Q4_K_M.gguf": gemma}, sha="2" * 40)
        h.repos["test/Huge-GGUF"] = Repo(
            {"huge-Q2_K.gguf": header, "huge-Q4_K_M.gguf": header},
            listed_sizes={"huge-Q2_K.gguf": 9_000_000_000, "huge-Q4_K_M.gguf": 14_000_000_000},
        )
        h.repos["test/Bad-GGUF"] = Repo({"bad-Q4_K_M.gguf": gemma}, listed_sha256={"bad-Q4_K_M.gguf": "0" * 64})
        yield h


def pulling(project: Project, hub: Hub, model: str, **env: str) -> Project:
    project.env.update(LLMPI_MODEL=model, LLMPI_MEMORY_LIMIT=LIMIT, HF_ENDPOINT=hub.url, **env)
    return project


def health_log(project: Project) -> str:
    c = project.container()
    c.reload()
    return "\n".join(str(e["Output"]) for e in (c.attrs["State"].get("Health", {}).get("Log") or []))


def key_of(project: Project) -> str:
    code, out = project.exec(["llmpi", "keys", "show"])
    assert code == 0, out
    return out.strip()


def models_in_volume(project: Project) -> list[str]:
    code, out = project.exec(["ls", "-A", "/data/models"])
    assert code == 0, out
    return sorted(out.split())


def test_pull_at_start_shows_progress_then_serves(
    extra_project: Project, hub: Hub, request: pytest.FixtureRequest
) -> None:
    hub.rate = 40e6  # about 6 s for the 253 MB: long enough to watch
    start = time.monotonic()
    pulling(extra_project, hub, "test/Gemma-GGUF").up()
    pulls: list[dict[str, Any]] = []
    page = others = 0

    def watch() -> bool:
        nonlocal page, others
        r = requests.get(f"{extra_project.url}/health", timeout=5)
        if r.status_code == 503 and r.json().get("status") == "pulling":
            pulls.append(r.json()["pull"])
            page = requests.get(f"{extra_project.url}/", timeout=5).status_code
            others = requests.get(f"{extra_project.url}/v1/models", timeout=5).status_code
        return r.status_code == 200

    wait_for(watch, 300, pause=0.5, what="pulled and healthy")
    assert pulls, "no 503 with the pull's progress was seen"
    assert page == 200 and others == 503  # the chat page is served while pulling; nothing else is
    assert {p["model"] for p in pulls} == {"gemma"} and pulls[-1]["total_bytes"] == len(
        hub.repos["test/Gemma-GGUF"].files["gemma-Q2_K.gguf"]
    )
    assert any(0 < p["percent"] < 100 for p in pulls), pulls
    client = OpenAI(base_url=f"{extra_project.url}/v1", api_key=key_of(extra_project), max_retries=0)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
    )  # any name: one model on the board
    first_answer = time.monotonic() - start
    assert_says_something(reply, max_tokens=8)
    assert [m.id for m in client.models.list().data] == ["gemma"]
    logs = extra_project.logs()
    # the fit table, with the one type that fits 2 GB marked; the progress lines
    assert "Q2_K" in logs and "<-" in logs and "Q8_0" in logs and "pulling gemma: downloading gemma-Q2_K.gguf" in logs
    assert models_in_volume(extra_project) == ["gemma.Q2_K.gguf", "gemma.Q2_K.json"]
    code, manifest = extra_project.exec(["llmpi", "models", "show", "gemma"])
    assert code == 0 and json.loads(manifest)["source"]["repo"] == "test/Gemma-GGUF"
    say(
        request.config,
        f"\nup -> first answer with a pulled model (253 MB at 40 MB/s from the stand-in): {first_answer:.1f} s",
    )
    # a restart serves it from the volume: nothing is downloaded again
    served = hub.stats.body_bytes.get("gemma-Q2_K.gguf", 0)
    extra_project.compose("restart", "llmpi")
    extra_project.wait_healthy(180)
    assert hub.stats.body_bytes.get("gemma-Q2_K.gguf", 0) == served


def test_a_restart_mid_download_continues_where_it_stopped(extra_project: Project, hub: Hub) -> None:
    hub.rate = 15e6
    size = len(hub.repos["test/Gemma-GGUF"].files["gemma-Q2_K.gguf"])
    pulling(extra_project, hub, "test/Gemma-GGUF").up()

    def far_enough() -> bool:
        r = requests.get(f"{extra_project.url}/health", timeout=5)
        return r.status_code == 503 and r.json().get("pull", {}).get("done_bytes", 0) > 60e6

    wait_for(far_enough, 120, pause=0.5, what="a third of the download")
    extra_project.compose("restart", "llmpi")
    hub.rate = None
    extra_project.wait_healthy(300)
    resumed = [int(r[6:].split("-")[0]) for _, r in hub.ranges_for("gemma-Q2_K.gguf")]
    assert resumed and max(resumed) >= 10 << 20, hub.stats.ranges  # continued from the part on the volume
    assert hub.stats.body_bytes["gemma-Q2_K.gguf"] < 2 * size
    assert models_in_volume(extra_project) == ["gemma.Q2_K.gguf", "gemma.Q2_K.json"]  # no partial files left


@pytest.mark.parametrize(
    ("model", "endpoint", "reason"),
    [
        ("test/Huge-GGUF", None, "does not fit"),
        ("test/Bad-GGUF", None, "sha256 does not match"),
        ("test/Gemma-GGUF", "http://{host}:9", "cannot reach the hub"),
    ],
    ids=["too-big", "wrong-sha256", "hub-unreachable"],
)
def test_refusals_leave_nothing_and_say_why(
    extra_project: Project, hub: Hub, model: str, endpoint: str | None, reason: str
) -> None:
    pulling(extra_project, hub, model)
    if endpoint:
        extra_project.env["HF_ENDPOINT"] = endpoint.format(host=hub.host)
    extra_project.up()
    wait_for(lambda: extra_project.docker_health() == "unhealthy", 120, pause=1, what="unhealthy")
    assert reason in health_log(extra_project) and reason in extra_project.logs()
    if "reach" in reason:
        assert "docker compose cp" in health_log(extra_project)  # how to bring a model in by hand
    assert models_in_volume(extra_project) == []
    if model == "test/Huge-GGUF":
        assert hub.stats.body_bytes.get("huge-Q2_K.gguf", 0) <= 16 << 20  # its header only, before any download
    c = extra_project.container()
    c.reload()
    assert c.status == "running" and c.attrs["RestartCount"] == 0


@pytest.mark.contract
def test_several_models_by_name_and_llmpi_models_while_a_stream_runs(extra_project: Project, hub: Hub) -> None:
    # one slot of 2048 tokens: about 321 MiB planned per Gemma; 850M less the 256M reserve holds one at a time
    pulling(extra_project, hub, "test/Gemma-GGUF", LLMPI_PARALLEL="1", LLMPI_CTX_SIZE="2048")
    extra_project.env["LLMPI_MEMORY_LIMIT"] = "850M"
    extra_project.up()
    extra_project.wait_healthy(300)
    code, out = extra_project.exec(["llmpi", "models", "pull", "test/Second-GGUF"])
    assert code == 0 and "pulled second" in out, out
    assert "restarting llama-server" in out  # one model -> several: into router mode
    wait_for(lambda: "serving 2 models by name" in extra_project.logs(), 120, pause=1, what="router mode")
    extra_project.wait_healthy(300)
    client = OpenAI(base_url=f"{extra_project.url}/v1", api_key=key_of(extra_project), max_retries=0)

    def status() -> dict[str, str]:
        data = requests.get(
            f"{extra_project.url}/v1/models", headers={"Authorization": f"Bearer {client.api_key}"}, timeout=10
        ).json()
        return {m["id"]: m["status"]["value"] for m in data["data"]}

    wait_for(lambda: status() == {"gemma": "loaded", "second": "unloaded"}, 120, what="the default model loaded")
    # a stream on the default model, while a third model is pulled, listed and removed
    chunks: list[str] = []
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            for ev in client.chat.completions.create(
                model="gemma",
                stream=True,
                max_tokens=400,
                messages=[{"role": "user", "content": "Count to fifty."}],
                extra_body={"ignore_eos": True},
            ):
                chunks.extend(c.delta.content or "" for c in ev.choices)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=stream)
    t.start()
    wait_for(lambda: bool(chunks), 60, what="the stream's first tokens")
    hub.rate = 50e6  # a pull of about 5 s, while the stream runs
    code, out = extra_project.exec(["llmpi", "models", "pull", "test/Third-GGUF"])
    assert code == 0 and "the server's model list is updated" in out, out
    code, listing = extra_project.exec(["llmpi", "models"])
    assert code == 0 and "third" in listing and "second" in listing and "(default)" in listing, listing
    assert status().get("third") == "unloaded"
    code, out = extra_project.exec(["llmpi", "models", "rm", "gemma"])
    assert code != 0 and "LLMPI_MODEL serves" in out  # the model being served is kept unless --force
    code, out = extra_project.exec(["llmpi", "models", "rm", "third"])
    assert code == 0 and "removed third" in out, out
    t.join(120)
    assert not errors and len(chunks) > 100, (errors, len(chunks))
    assert "third" not in status()
    # switching by name: loaded on demand, the least recently used unloaded beyond the fit's count
    assert "at most 1 loaded at once" in extra_project.logs()
    reply = client.chat.completions.create(
        model="second", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert_says_something(reply, max_tokens=4, model="second")  # the router names the model that answered
    assert status() == {"gemma": "unloaded", "second": "loaded"}
    reply = client.chat.completions.create(
        model="some-other-name", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert status() == {"gemma": "loaded", "second": "unloaded"}  # a name that is not on the board: the default


def test_a_model_file_without_a_manifest_is_not_served_and_the_embedded_model_says_what_it_is(
    extra_project: Project, tmp_path: Path
) -> None:
    """Files in /data/models without a manifest (a copy in progress, a stray file) are not served; the single-model
    setup stays a single llama-server (no router)."""
    stray = llama_like(tmp_path / "stray.gguf")
    extra_project.up()
    extra_project.wait_healthy(180)
    subprocess.run(["docker", "cp", str(stray), f"{extra_project.container().id}:/data/models/stray.gguf"], check=True)
    code, listing = extra_project.exec(["llmpi", "models"])
    assert code == 0 and "stray" not in listing and "gemma-3-270m-q4_k_m" in listing, listing
    # the embedded model says what it is, and the one line that gets a useful assistant
    assert "tiny offline test model" in extra_project.logs() and "LLMPI_MODEL=qwen3-4b-instruct" in extra_project.logs()


def test_scripts_start_waits_then_says_where_and_the_key(appliance_image: str) -> None:
    """The newcomer's command: scripts/start brings the appliance up, waits until it serves, prints the base_url with
    the port compose published and the generated key (read from the volume, never from the log)."""
    name = f"llmpi-test-start-{os.getpid()}"
    env = compose_env({"LLMPI_PROJECT": name})
    try:
        out = subprocess.run(
            [str(ROOT / "scripts" / "start")], env=env, capture_output=True, text=True, timeout=600, check=True
        ).stdout
        port = (
            subprocess.run(
                ["docker", "compose", "-p", name, "port", "llmpi", "8080"], env=env, capture_output=True, text=True
            )
            .stdout.strip()
            .rsplit(":", 1)[1]
        )
        assert re.search(rf"llmpi is up: http://\S+:{port}/v1", out), out
        key = re.search(r"API key: (sk-llmpi-\S+)", out)
        assert key, out
        r = requests.get(
            f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key[1]}"}, timeout=10
        )
        assert r.status_code == 200
    finally:
        subprocess.run(["docker", "compose", "-p", name, "down", "-v", "--timeout", "10"], env=env, capture_output=True)
