"""The Ollama door (port 11434) against a LAN device without a key (issue 23), on the real image with its default
settings: a device that holds 600 connections and trickles their headers a byte a second (opening a new one for
each that is refused or cut off) leaves the door answering a keyed device within 2 s; a body declared too large is
a 413 before it is sent, and one without a key a 401 before it is read. Both devices are containers on the
project's own network (slowclients.py, probe.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.compose_helpers import Project

pytestmark = pytest.mark.security
HERE = Path(__file__).parent
HOLD, SECONDS = 600, 25  # connections the slow device keeps trying to hold, and for how long
DOOR = 11434  # the door's port inside the container (and on the project's network)


def device(project: Project, image: str, script: str, *args: str) -> subprocess.Popen[str]:
    """A container on the project's network running one of this folder's scripts (the image's python3)."""
    cmd = ["docker", "run", "--rm", "--network", f"{project.name}_default", "--entrypoint", "python3", image,
           "-c", (HERE / script).read_text(), *args]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_600_trickling_connections_leave_the_door_to_a_keyed_device(
    appliance: Project, api_key: str, appliance_image: str
) -> None:
    slow = device(appliance, appliance_image, "slowclients.py", "llmpi", str(DOOR), str(HOLD), str(SECONDS))
    try:
        assert slow.stdout is not None
        ready = json.loads(slow.stdout.readline() or "{}")  # the 600 tried
        assert ready.get("ready", 0) + ready.get("failed", 0) == HOLD, (ready, slow.stderr and slow.stderr.read())
        probe = device(appliance, appliance_image, "probe.py", "llmpi", str(DOOR), api_key, "5")
        out, err = probe.communicate(timeout=120)
        answers = json.loads(out or "[]")
        assert [status for status, _ in answers] == [200] * 5, (answers, err)
        assert max(took for _, took in answers) <= 2.0, answers
        end, err = slow.communicate(timeout=SECONDS + 60)
        counts = json.loads(end.splitlines()[-1])
        # past 16 connections from its address, each new one was refused with 503 at once; the trickled ones
        # were cut off after the header timeout (10 s) and replaced, again and again
        assert counts["refused_503"] > HOLD and counts["closed"] > 0, counts
        assert counts["open_at_end"] <= HOLD, counts
    finally:
        if slow.poll() is None:
            slow.kill()


def test_a_body_too_large_or_without_a_key_is_refused_before_it_is_sent(appliance: Project, api_key: str) -> None:
    port = int(appliance.ollama_url.rsplit(":", 1)[1])
    # with a key, 200 MiB: over LLMPI_MAX_BODY; without a key, 1000 bytes: refused before they are read
    for auth, length, status in ((f"Authorization: Bearer {api_key}\r\n", 200 << 20, 413), ("", 1000, 401)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            start = time.monotonic()
            s.sendall(f"POST /api/chat HTTP/1.1\r\nHost: pi\r\n{auth}Content-Length: {length}\r\n\r\n".encode())
            head = s.recv(65536).split(b"\r\n", 1)[0]
            assert time.monotonic() - start < 1.0
            assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
