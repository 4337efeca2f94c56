"""One compose project of the llmpi compose file, driven with `docker compose` the way a user does: up, down, logs,
its published port, waiting until it is healthy. Standard library only."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import ROOT
from benchlib.wait import http_status, wait_for

COMPOSE_FILE = ROOT / "compose.yaml"
# published on this machine's loopback only, on random free ports (`Project.port` and `Project.ollama_url` tell which)
LOOPBACK = {
    "LLMPI_BIND_ADDRESS": "127.0.0.1",
    "LLMPI_HOST_PORT": "",
    "LLMPI_OLLAMA_HOST_PORT": "",
    "LLMPI_TLS_HOST_PORT": "",
    "LLMPI_OLLAMA_TLS_HOST_PORT": "",
}
OLLAMA_PORT = 11434  # the Ollama door's port in the container
TLS_PORT = 8443  # HTTPS to the OpenAI API, in the container
OLLAMA_TLS_PORT = 11443  # HTTPS to the Ollama API, in the container
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def clean_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its LLMPI_ settings (LLMPI_IMAGE kept: which image to run), then
    `overrides`: a project started from it gets only the settings it is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPI_") or k == "LLMPI_IMAGE"}
    env.update(overrides or {})
    return env


def exec_argv(logs: str) -> list[str]:
    """llama-server's command line from the launcher's last `llmpi: exec ...` log line; [] when there is none."""
    found = [ANSI.sub("", line) for line in logs.splitlines() if "llmpi: exec " in line]
    return found[-1].split("llmpi: exec ", 1)[1].split() if found else []


@dataclass
class Project:
    """One compose project: its own containers, volumes and port. `env` is laid over `clean_env()` (this shell's
    LLMPI_ settings left out), or over the whole environment with `user_env` (a project the user runs)."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=lambda: [COMPOSE_FILE])
    user_env: bool = False

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env} if self.user_env else clean_env(self.env)

    def compose(
        self, *args: str, check: bool = True, timeout: float | None = 300, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["docker", "compose", "-p", self.name]
        for f in self.files:
            cmd += ["-f", str(f)]
        return subprocess.run(
            [*cmd, *args], env=self.environment(), cwd=ROOT, check=check, capture_output=True, text=True,
            timeout=timeout, input=input,
        )  # fmt: skip

    def up(self, *services: str, recreate: bool = False, timeout: float | None = 300) -> None:
        self.compose("up", "-d", "--no-build", *(["--force-recreate"] if recreate else []), *services, timeout=timeout)

    def down(self) -> None:
        """Remove the project, its volumes included."""
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)

    def logs(self, service: str = "llmpi") -> str:
        return self.compose("logs", "--no-color", "--no-log-prefix", service, check=False).stdout

    def container_id(self, service: str = "llmpi") -> str:
        """The service's container; empty when it has none."""
        return self.compose("ps", "-q", service, check=False).stdout.strip()

    def published(self, service: str = "llmpi", port: int = 8080) -> int:
        """The host port that the service's `port` is published on."""
        out = self.compose("port", service, str(port)).stdout.strip()
        return int(out.splitlines()[0].rsplit(":", 1)[1])

    @property
    def port(self) -> int:
        return self.published()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        """HTTPS to the OpenAI API (LLMPI_TLS); the certificate is for `localhost`, among other names."""
        return f"https://localhost:{self.published(port=TLS_PORT)}"

    @property
    def ollama_tls_url(self) -> str:
        return f"https://localhost:{self.published(port=OLLAMA_TLS_PORT)}"

    @property
    def ollama_url(self) -> str:
        """The Ollama door's address (no /api: the ollama client's `host`)."""
        return f"http://127.0.0.1:{self.published(port=OLLAMA_PORT)}"

    def health(self) -> int:
        """The status of GET /health: 200 once the model is loaded, 503 while it loads (the port is looked up each
        time: a restarted container may be published on another one)."""
        return http_status(f"{self.url}/health")

    def wait_healthy(self, timeout: float = 180, pause: float = 0.25) -> float:
        """Seconds until /health answers 200; TimeoutError with the log's last lines after `timeout`."""
        return wait_for(
            lambda: self.health() == 200, timeout, pause, f"{self.name} /health == 200",
            detail=lambda: "\n".join(self.logs().splitlines()[-40:]),
        )  # fmt: skip
