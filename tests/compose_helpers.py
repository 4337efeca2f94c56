"""Driving the appliance through `docker compose`, the way a user does (benchlib.compose, which the benchmark
scripts use too), plus the docker SDK to look inside and the logs kept in artifacts/."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docker
import pytest

from benchlib import ROOT as ROOT
from benchlib import compose
from benchlib.compose import COMPOSE_FILE as COMPOSE_FILE
from benchlib.wait import wait_for as wait_for

ARTIFACTS = ROOT / "artifacts"
PREPARE_IMAGE = os.environ.get("LLMPI_PREPARE_IMAGE", "llmpi-prepare:latest")
PIPELINE_OVERRIDE = ROOT / "tests" / "pipeline" / "compose.pipeline.yaml"
KEY_RE = re.compile(r"sk-llmpi-[A-Za-z0-9_\-]+")
# every test project binds to loopback on a random free port and announces nothing on this machine's network (the
# `lan` tests announce on networks of their own)
TEST_ENV = {**compose.LOOPBACK, "LLMPI_ANNOUNCE": "off"}


def compose_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    return compose.clean_env({**TEST_ENV, **(overrides or {})})


@dataclass
class Project(compose.Project):
    """One compose project (its own container, volume and port) of the llmpi compose file, with TEST_ENV; its log is
    kept in artifacts/<name>.log when it is removed or does not get healthy."""

    def environment(self) -> dict[str, str]:
        return compose_env(self.env)

    def down(self) -> None:
        self.save_logs()
        super().down()

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

    def wait_healthy(self, timeout: float = 180, pause: float = 0.25) -> float:
        try:
            return super().wait_healthy(timeout, pause)
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


def build_logged(config: pytest.Config, what: str, cmd: list[str], log_name: str, env: Mapping[str, str]) -> None:
    """Build an image once per test session (a no-op when Docker's layer cache is warm), its output in
    artifacts/<log_name> and how long it took said, so that a CI run shows where its time went; skipped with
    LLMPI_TEST_SKIP_BUILD=1."""
    if os.environ.get("LLMPI_TEST_SKIP_BUILD"):
        return
    say(config, f"\nbuilding {what} (progress in artifacts/{log_name})")
    ARTIFACTS.mkdir(exist_ok=True)
    started = time.monotonic()
    with (ARTIFACTS / log_name).open("w") as log:
        subprocess.run(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, check=True)
    say(config, f"built {what.split(' (')[0]} in {time.monotonic() - started:.0f} s")


def build_profile_service(config: pytest.Config, service: str, profile: str, why: str) -> None:
    """Build one of compose.yaml's profile services once (the tests build `prepare`; none builds the benchmark's
    `peer`)."""
    cmd = ["docker", "compose", "-f", str(COMPOSE_FILE), "--profile", profile, "build", service]
    build_logged(config, f"the {service} image ({why})", cmd, f"build-{service}.log", compose_env())


def say(config: pytest.Config, text: str) -> None:
    """A line on pytest's terminal now, from inside a fixture or test (whose output pytest otherwise captures)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line(text)
