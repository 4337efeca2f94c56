"""The appliance announced on a network of the test's own (issue 14): a client container on the same internal L2
segment finds it with python-zeroconf and scripts/find, reads the TXT records, reaches the advertised address, sees
the goodbye at stop, and nothing at all with LLMPI_ANNOUNCE=off. Nothing is sent on this machine's own network."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tests.compose_helpers import COMPOSE_FILE, Project, wait_for
from tests.lan.helpers import (
    API,
    HTTP,
    LAN_OVERRIDE,
    assert_announced_api,
    client,
    events,
    pihost_address,
    seconds_to_goodbye,
)

pytestmark = [pytest.mark.lan]


@pytest.fixture(scope="module")
def lan(appliance_image: str) -> Iterator[Project]:
    project = Project(f"llmpi-lan-{os.getpid()}", env={"TEST_ANNOUNCE": "auto"}, files=[COMPOSE_FILE, LAN_OVERRIDE])
    try:
        project.up()
        wait_for(lambda: project.docker_health() == "healthy", 180, pause=1, what="llmpi healthy")
        yield project
    finally:
        project.compose("logs", "--no-color", "announce", check=False)
        project.down()


def test_a_client_discovers_it_reads_txt_and_calls_the_api(lan: Project) -> None:
    assert_announced_api(lan, "testpi", pihost_address(lan))


def test_the_page_is_announced_as_http(lan: Project) -> None:
    found = [e for e in events(client(lan, "/opt/find/lanclient.py", HTTP, "5").stdout) if e["event"] == "Added"]
    assert [(e["name"], e["port"], e["txt"]) for e in found] == [(f"llmpi chat on testpi.{HTTP}", 8080, {"path": "/"})]


def test_scripts_find_prints_the_export_line(lan: Project) -> None:
    done = client(lan, "/opt/find/find")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "export OPENAI_BASE_URL=http://testpi.local:8080/v1" in done.stdout.splitlines(), done.stdout
    assert "1. llmpi on testpi  http://testpi.local:8080/v1" in done.stdout, done.stdout
    assert "# Ollama apps (Home Assistant, Open WebUI): http://testpi.local:11434 with the same key" in done.stdout
    address = pihost_address(lan)
    done = client(lan, "/opt/find/find", "--address", "testpi")
    assert f"export OPENAI_BASE_URL=http://{address}:8080/v1" in done.stdout.splitlines(), done.stdout
    listed = json.loads(client(lan, "/opt/find/find", "--json").stdout)
    assert [(f["host"], f["port"], f["base_url"], f["ollama_url"]) for f in listed] == [
        ("testpi.local", 8080, "http://testpi.local:8080/v1", "http://testpi.local:11434")
    ], listed
    done = client(lan, "/opt/find/find", "kitchen")
    assert done.returncode == 1 and "no appliance found matches 'kitchen'" in done.stderr, done.stderr


def test_stop_says_goodbye(lan: Project) -> None:
    """The service disappears from a listening client at `docker compose stop`, long before its records' TTL."""
    try:
        waited = seconds_to_goodbye(lan, lambda: lan.compose("stop", "announce", "llmpi"))
        assert waited < 30, waited  # the records' TTL is 120 s (host) / 4500 s (service): this was the goodbye
    finally:
        lan.compose("start", "llmpi", "announce")
        wait_for(lambda: lan.docker_health() == "healthy", 180, pause=1, what="llmpi healthy again")


def test_off_announces_nothing(lan: Project) -> None:
    lan.env["TEST_ANNOUNCE"] = "off"
    lan.compose("up", "-d", "--no-build", "announce")
    try:
        wait_for(lambda: "LLMPI_ANNOUNCE=off" in lan.compose("logs", "announce").stdout, 30, what="announce off")
        assert events(client(lan, "/opt/find/lanclient.py", API, "5").stdout) == []
        done = client(lan, "/opt/find/find", "--timeout", "3")
        assert done.returncode == 1 and "no llmpi answered within 3 s" in done.stderr, done.stdout + done.stderr
    finally:
        lan.env["TEST_ANNOUNCE"] = "auto"
        lan.compose("up", "-d", "--no-build", "announce")
