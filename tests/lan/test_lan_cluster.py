"""LLMPI_WORKERS=auto (issue 14): a worker board announces `_llmpi-worker._tcp` on the test's network, the head's
announcer hears it, and the head splits its model with the worker it heard, as with LLMPI_WORKERS=<address>."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator

import pytest

from llmpi import __version__
from tests.appliance.cluster_helpers import AMX, WORKER_MEMORY, service_log
from tests.compose_helpers import COMPOSE_FILE, ROOT, Project, wait_for
from tests.lan.helpers import CALL, LAN_OVERRIDE, address_of, client, events, pihost_address

pytestmark = [pytest.mark.lan]

CLUSTER_OVERRIDE = ROOT / "tests" / "lan" / "compose.lan-cluster.yaml"
WORKER_TYPE = "_llmpi-worker._tcp.local."
# the embedded model needs about 300 MiB in all: with one worker of 100 MiB the head needs more than with two
HEAD_MEMORY = f"{280 + (256 if AMX else 0)}M"


@pytest.fixture(scope="module")
def boards(appliance_image: str) -> Iterator[Project]:
    env = {
        "TEST_ANNOUNCE": "auto",
        "TEST_CLUSTER_SECRET": secrets.token_urlsafe(32),
        "TEST_HEAD_MEMORY": HEAD_MEMORY,
        "TEST_WORKER_MEMORY": WORKER_MEMORY,
    }
    project = Project(f"llmpi-lanc-{os.getpid()}", env=env, files=[COMPOSE_FILE, LAN_OVERRIDE, CLUSTER_OVERRIDE])
    try:
        project.up()
        wait_for(lambda: project.docker_health() == "healthy", 240, pause=1, what="the head healthy")
        yield project
    finally:
        for service in ("llmpi", "announce", "worker", "announce-worker"):
            (ROOT / "artifacts").mkdir(exist_ok=True)
            (ROOT / "artifacts" / f"{project.name}-{service}.log").write_text(service_log(project, service))
        project.down()


def test_the_worker_announces_itself(boards: Project) -> None:
    found = [e for e in events(client(boards, "/opt/find/lanclient.py", WORKER_TYPE, "5").stdout)]
    added = [e for e in found if e["event"] == "Added"]
    assert len(added) == 1, found
    w = added[0]
    assert w["name"] == f"llmpi worker on testworker.{WORKER_TYPE}" and w["port"] == 50052, w
    assert w["addresses"] == [address_of(boards, "piworker")], w
    txt = w["txt"]
    assert isinstance(txt, dict) and txt["version"] == __version__ and txt["rpc"] and txt["llama_cpp"], txt


def test_the_head_takes_the_worker_it_heard(boards: Project) -> None:
    worker = address_of(boards, "piworker")
    head = service_log(boards, "llmpi")
    assert f"llmpi: LLMPI_WORKERS=auto: {worker}:50052" in head, head
    assert "cluster of 2 boards" in head, head
    assert f"{worker}:50052" in re.sub(r"\s+", " ", head.split("cluster of 2 boards", 1)[1]), head
    code, status = boards.exec(["llmpi", "cluster", "status"])
    assert code == 0 and worker in status, status
    key = boards.exec(["llmpi", "keys", "show"])[1].strip()
    url = f"http://{pihost_address(boards)}:8080/v1/models"
    assert client(boards, "-c", CALL, url, key).stdout.startswith("200 "), "the head serves, split with the worker"
