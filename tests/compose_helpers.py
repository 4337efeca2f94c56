"""Driving the appliance through `docker compose`, the way a user does, plus the docker SDK to look inside."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
ARTIFACTS = ROOT / "artifacts"
PREPARE_IMAGE = os.environ.get("LLMPI_PREPARE_IMAGE", "llmpi-prepare:latest")
PIPELINE_OVERRIDE = ROOT / "tests" / "pipeline" / "compose.pipeline.yaml"
KEY_RE = re.compile(r"sk-llmpi-[A-Za-z0-9_\-]+")
# every test project binds to loopback on a random free port and announces nothing on this machine's network (the
# `lan` tests announce on networks of their own)
TEST_ENV = {"LLMPI_BIND_ADDRESS": "127.0.0.1", "LLMPI_HOST_PORT": "", "LLMPI_ANNOUNCE": "off"}


def compose_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPI_") or k == "LLMPI_IMAGE"}
    env.update(TEST_ENV)
    env.update(overrides or {})
    return env


def wait_for(check: Callable[[], bool], timeout: float, pause: float = 0.25, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(pause)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Project:
    """One compose project (its own container, volume and port) of the llmpi compose file."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=lambda: [COMPOSE_FILE])

    def compose(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        cmd = ["docker", "compose", "-p", self.name]
        for f in self.files:
            cmd += ["-f", str(f)]
        return subprocess.run(
            [*cmd, *args], env=compose_env(self.env), check=check, capture_output=True, text=True, timeout=timeout
        )

    def up(self) -> None:
        self.compose("up", "-d", "--no-build")

    def down(self) -> None:
        self.save_logs()
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--no-log-prefix", "llmpi", check=False).stdout

    def save_logs(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"{self.name}.log").write_text(self.logs())

    def container(self) -> Any:
        client = docker.from_env()
        found = client.containers.list(
            all=True, filters={"label": [f"com.docker.compose.project={self.name}", "com.docker.compose.service=llmpi"]}
        )
        assert found, f"no llmpi container in project {self.name}"
        return found[0]

    @property
    def port(self) -> int:
        out = self.compose("port", "llmpi", "8080").stdout.strip()
        return int(out.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> int:
        return requests.get(f"{self.url}/health", timeout=5).status_code

    def wait_healthy(self, timeout: float = 180) -> None:
        try:
            wait_for(lambda: self.health() == 200, timeout, what=f"{self.name} /health == 200")
        except TimeoutError:
            self.save_logs()
            raise

    def docker_health(self) -> str:
        c = self.container()
        c.reload()
        return str(c.attrs["State"].get("Health", {}).get("Status", "none"))

    def generated_key(self) -> str:
        """The key generated at first start: announced once in the log (never the key itself), shown by
        `llmpi keys show` in the container."""
        logs = self.logs()
        assert logs.count("a new API key was generated") == 1, "expected the new key announced exactly once"
        code, out = self.exec(["llmpi", "keys", "show"])
        assert code == 0, out
        key = out.strip()
        assert KEY_RE.fullmatch(key), key
        assert key not in logs, "the key must never be in the container's log"
        return key

    def stored_key(self) -> str:
        """The key the appliance generated and stored on its volume (whichever start generated it)."""
        code, out = self.exec(["cat", "/data/api_key"])
        assert code == 0, out
        return out.strip()

    def exec(self, cmd: list[str], user: str = "llmpi") -> tuple[int, str]:
        code, out = self.container().exec_run(cmd, user=user)
        return int(code), out.decode(errors="replace")


def build_profile_service(config: pytest.Config, service: str, profile: str, why: str) -> None:
    """Build one of compose.yaml's profile services (`prepare`, `peer`) once, its log in artifacts/build-<service>.log;
    skipped with LLMPI_TEST_SKIP_BUILD=1."""
    if os.environ.get("LLMPI_TEST_SKIP_BUILD"):
        return
    say(config, f"\nbuilding the {service} image ({why})")
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / f"build-{service}.log").open("w") as log:
        subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), "--profile", profile, "build", service],
            env=compose_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )


def say(config: pytest.Config, text: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text)
