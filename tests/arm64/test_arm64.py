"""The Raspberry Pi image: cross-built for linux/arm64, run under QEMU as a Pi 4 (Cortex-A72) and a Pi 5
(Cortex-A76). Slow paths, so: the embedded 270M model, a few tokens."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import openai
import pytest

from tests.appliance import cluster_helpers
from tests.compose_helpers import ARTIFACTS, COMPOSE_FILE, ROOT, Project, build_logged, compose_env

pytestmark = pytest.mark.arm64
HERE = Path(__file__).resolve().parent
IMAGE = os.environ.get("LLMPI_ARM64_IMAGE", "llmpi:arm64")
EM_AARCH64 = 183  # ELF e_machine of AArch64


@pytest.fixture(scope="session")
def arm64_image(pytestconfig: pytest.Config) -> str:
    why = "cross-built, 18 to 22 minutes the first time on 2 slow cores"
    env = compose_env({"LLMPI_ARM64_IMAGE": IMAGE})
    build_logged(pytestconfig, f"the arm64 image ({why})", [str(ROOT / "scripts/build-arm64")], "build-arm64.log", env)
    return IMAGE


def test_image_is_linux_arm64(arm64_image: str) -> None:
    image = docker.from_env().images.get(arm64_image)
    assert (image.attrs["Os"], image.attrs["Architecture"]) == ("linux", "arm64")


def test_binaries_are_aarch64(arm64_image: str) -> None:
    client = docker.from_env()
    container = client.containers.create(arm64_image, platform="linux/arm64")
    try:
        stream, _ = container.get_archive("/opt/llama/bin")
        data = io.BytesIO(b"".join(stream))
    finally:
        container.remove()
    checked = 0
    names: list[str] = []
    with tarfile.open(fileobj=data) as tar:
        for member in tar.getmembers():
            names.append(Path(member.name).name)
            if not member.isfile():
                continue
            f = tar.extractfile(member)
            assert f is not None
            head = f.read(20)
            assert head[:4] == b"\x7fELF", member.name
            assert head[4] == 2, f"{member.name} is not 64-bit"
            assert int.from_bytes(head[18:20], "little") == EM_AARCH64, f"{member.name} is not aarch64"
            checked += 1
    assert checked >= 10
    assert {"libggml-cpu-armv8.0_1.so", "libggml-cpu-armv8.2_2.so", "llama-server"} <= set(names)


@pytest.fixture
def pi(request: pytest.FixtureRequest, arm64_image: str) -> Iterator[Project]:
    cpu = request.param
    project = Project(
        f"llmpi-arm64-{os.getpid()}-{cpu}",
        env={"LLMPI_IMAGE": arm64_image, "QEMU_CPU": cpu, "LLMPI_LOG_LEVEL": "trace"},
        files=[COMPOSE_FILE, HERE / "compose.arm64.yaml"],
    )
    project.up()
    yield project
    project.down()


@pytest.mark.parametrize(
    ("pi", "variant"),
    [("cortex-a72", "armv8.0_1"), ("cortex-a76", "armv8.2_2")],
    indirect=["pi"],
    ids=["pi4-cortex-a72", "pi5-cortex-a76"],
)
def test_cpu_variant_chosen_at_run_time(pi: Project, variant: str) -> None:
    pi.wait_healthy(timeout=600)
    logs = pi.logs()
    loaded = [line for line in logs.splitlines() if "loaded CPU backend from" in line]
    assert loaded, "llama-server did not log its CPU backend"
    assert loaded[-1].rstrip().endswith(f"/opt/llama/bin/libggml-cpu-{variant}.so"), loaded
    if variant == "armv8.2_2":  # one chat completion through the SDK on the emulated Pi 5 (a few tokens)
        client = openai.OpenAI(base_url=f"{pi.url}/v1", api_key=pi.generated_key(), max_retries=0, timeout=300)
        completion = client.chat.completions.create(
            model="gpt-3.5-turbo", max_tokens=4, temperature=0, messages=[{"role": "user", "content": "Say hello."}]
        )
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_an_arm64_worker_serves_an_amd64_head(arm64_image: str, appliance_image: str) -> None:
    """Mixed boards: the amd64 head and worker1 with worker2 from the arm64 image (QEMU, Cortex-A76), same build and
    protocol: the versions match, the layers split, it generates. Its numbers are not bit-identical to an amd64
    board's (NEON and AVX kernels sum in other orders; docs/cluster.md), so greedy texts can part after a few
    tokens. What holds: the same likeliest first token for every prompt, and the top-5 log-probabilities within 0.3
    of one amd64 board's (measured: at most 0.19 apart; repacking alone moves them up to 0.24 on one amd64 board)."""
    project = Project(
        f"llmpi-arm64-cluster-{os.getpid()}",
        env={**cluster_helpers.ENV, "LLMPI_ARM64_IMAGE": arm64_image},
        files=[COMPOSE_FILE, ROOT / "tests" / "appliance" / "compose.cluster.yaml", HERE / "compose.arm64-worker.yaml"],
    )
    try:
        project.up()
        project.wait_healthy(timeout=900)
        assert "llmpi worker: aarch64" in cluster_helpers.service_logs(project, "worker2")
        assert "worker2:50052 (aarch64)" in cluster_helpers.service_logs(project, "llmpi")
        key = project.stored_key()
        text = cluster_helpers.completions(project, 8080, key, prompts=cluster_helpers.PROMPTS[:1])
        mixed = cluster_helpers.first_token_logprobs(project, 8080, key)
        reference = cluster_helpers.one_board(project, 8099, repack=False, probe=cluster_helpers.first_token_logprobs)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "cluster-arm64-worker.json").write_text(
            json.dumps({"text": text, "mixed": mixed, "one_board_no_repack": reference}, indent=1)
        )
        assert text[0].strip(), text
        for ours, theirs in zip(mixed, reference, strict=True):
            assert ours[0][0] == theirs[0][0], (ours, theirs)  # the same likeliest token
            common = {t: lp for t, lp in theirs}
            assert all(abs(lp - common[t]) < 0.3 for t, lp in ours if t in common), (ours, theirs)
    finally:
        for service in ("llmpi", "worker1", "worker2"):
            (ARTIFACTS / f"{project.name}-{service}.log").write_text(cluster_helpers.service_logs(project, service))
        project.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)
