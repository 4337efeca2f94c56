"""`scripts/deploy-pi` across an upgrade (marker `upgrade`), against a stand-in Pi: a container with an SSH server and
Docker's client, driving this machine's Docker through its socket (tests/upgrade/pi.Dockerfile), reached on a
loopback port with a key made for the test. A first deploy starts llmpi there and a named key is added; a second
deploy, of another image, backs the running llmpi up on the Pi (`llmpi backup`), keeps the image it ran as
`<image>-previous`, replaces the container and waits for the verdict; the volume is the same one: the named key
still answers, and the backup on the Pi holds it."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from tests.compose_helpers import KEY_RE, ROOT, wait_for

pytestmark = pytest.mark.upgrade

PI_IMAGE = "llmpi-test-pi:latest"
PI_DIR = "/srv/llmpi"  # LLMPI_PI_DIR on the stand-in
TAG = f"llmpi-deploytest-{os.getpid()}"  # the images shipped, and the compose project on the "Pi"


@dataclass
class Pi:
    container: Any
    checkout: Path  # what deploy-pi runs from: its script, compose.yaml, .env.example, scripts/start, a .env
    env: dict[str, str]

    def run(self, cmd: str) -> str:
        code, out = self.container.exec_run(["sh", "-c", cmd])
        assert code == 0, out.decode(errors="replace")
        return str(out.decode(errors="replace"))

    def deploy(self, image: str) -> str:
        done = subprocess.run([str(self.checkout / "scripts" / "deploy-pi"), "root@127.0.0.1"], capture_output=True,
                              text=True, timeout=900, env={**self.env, "LLMPI_ARM64_IMAGE": image})  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr


def llmpi_container() -> Any:
    found = docker.from_env().containers.list(
        filters={"label": [f"com.docker.compose.project={TAG}", "com.docker.compose.service=llmpi"]}
    )
    assert len(found) == 1, found
    return found[0]


def url_of(container: Any) -> str:
    container.reload()
    return f"http://127.0.0.1:{container.attrs['NetworkSettings']['Ports']['8080/tcp'][0]['HostPort']}"


def answers(container: Any, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    return requests.get(f"{url_of(container)}/v1/models", headers=headers, timeout=10).status_code


@pytest.fixture
def pi(tmp_path: Path, appliance_image: str) -> Iterator[Pi]:
    subprocess.run(["docker", "build", "-q", "-t", PI_IMAGE, "--build-arg",
                    f"DEBIAN_IMAGE={os.environ.get('LLMPI_DEBIAN_IMAGE', 'debian:trixie-slim')}",
                    "-f", str(ROOT / "tests" / "upgrade" / "pi.Dockerfile"), str(ROOT / "tests" / "upgrade")],
                   check=True, capture_output=True, timeout=900)  # fmt: skip
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    client = docker.from_env()
    container = client.containers.run(
        PI_IMAGE, detach=True, name=f"{TAG}-pi", ports={"22/tcp": ("127.0.0.1", None)},
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
    )  # fmt: skip
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("compose.yaml", ".env.example", "scripts/start", "scripts/deploy-pi"):
        shutil.copy2(ROOT / name, checkout / name)
    # the "Pi" serves on loopback only, on free ports, under a project name of its own, announcing nothing
    (checkout / ".env").write_text(
        f"LLMPI_PROJECT={TAG}\nLLMPI_BIND_ADDRESS=127.0.0.1\nLLMPI_HOST_PORT=\nLLMPI_OLLAMA_HOST_PORT=\n"
        "LLMPI_TLS_HOST_PORT=\nLLMPI_OLLAMA_TLS_HOST_PORT=\nLLMPI_ANNOUNCE=off\n"
    )
    try:
        authorized = io.BytesIO()
        with tarfile.open(fileobj=authorized, mode="w") as tar:
            data = key.with_suffix(".pub").read_bytes()
            info = tarfile.TarInfo(".ssh/authorized_keys")
            info.size, info.mode = len(data), 0o600
            folder = tarfile.TarInfo(".ssh")
            folder.type, folder.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(folder)
            tar.addfile(info, io.BytesIO(data))
        container.put_archive("/root", authorized.getvalue())
        container.reload()
        port = container.attrs["NetworkSettings"]["Ports"]["22/tcp"][0]["HostPort"]
        ssh_opts = (f"-o Port={port} -i {key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                    "-o LogLevel=ERROR")  # fmt: skip
        env = {**os.environ, "LLMPI_PI_DIR": PI_DIR, "LLMPI_SSH_OPTS": ssh_opts}
        env = {k: v for k, v in env.items() if not k.startswith("LLMPI_") or k in ("LLMPI_PI_DIR", "LLMPI_SSH_OPTS")}
        probe = ["ssh", *ssh_opts.split(), "-o", "BatchMode=yes", "root@127.0.0.1", "true"]
        wait_for(lambda: subprocess.run(probe, capture_output=True).returncode == 0, 60, pause=0.5, what="sshd")
        yield Pi(container, checkout, env)
    finally:
        container.exec_run(["sh", "-c", f"cd {PI_DIR} && docker compose down -v --timeout 10"])
        container.remove(force=True)
        for name in (f"{TAG}:first", f"{TAG}:second", f"{TAG}:second-previous"):
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(name)


def test_an_upgrade_by_deploy_pi_keeps_the_volume_and_backs_it_up_first(pi: Pi, appliance_image: str) -> None:
    client = docker.from_env()
    client.images.get(appliance_image).tag(TAG, "first")
    said = pi.deploy(f"{TAG}:first")
    assert "started on root@127.0.0.1 (healthy" in said and "backed up" not in said, said  # nothing to back up yet
    before = llmpi_container()
    code, out = before.exec_run(["llmpi", "keys", "add", "kitchen"], user="llmpi")
    assert code == 0, out
    key = KEY_RE.search(out.decode())
    assert key, out
    assert answers(before, key.group()) == 200

    # another image (the same llmpi with one label more): the upgrade
    second = client.images.build(fileobj=io.BytesIO(f"FROM {TAG}:first\nLABEL llmpi.test=second\n".encode()),
                                 tag=f"{TAG}:second", rm=True)[0]  # fmt: skip
    said = pi.deploy(f"{TAG}:second")
    assert f"backed up the Pi's llmpi to {PI_DIR}/backups/llmpi-" in said, said
    assert f"kept as {TAG}:second-previous" in said and "started on root@127.0.0.1 (healthy" in said, said
    after = llmpi_container()
    assert after.id != before.id and after.image.id == second.id
    assert client.images.get(f"{TAG}:second-previous").id == client.images.get(f"{TAG}:first").id
    assert answers(after, key.group()) == 200  # the same volume: the key made before the upgrade
    backup = pi.run(f"ls {PI_DIR}/backups").split()
    assert len(backup) == 1 and backup[0].startswith("llmpi-") and backup[0].endswith(".tar"), backup
    code, raw = pi.container.exec_run(["cat", f"{PI_DIR}/backups/{backup[0]}"])
    assert code == 0
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        keys_file = tar.extractfile("data/keys")
        assert keys_file is not None and key.group().encode() in keys_file.read()
    assert pi.run(f"stat -c %a {PI_DIR}/backups/{backup[0]}").strip() == "600"
