"""The appliance announced on a network of the test's own (issue 14): a client container on the same internal L2
segment finds it with python-zeroconf and scripts/find, reads the TXT records, reaches the advertised address, sees
the goodbye at stop, and nothing at all with LLMPI_ANNOUNCE=off. Nothing is sent on this machine's own network."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.compose_helpers import COMPOSE_FILE, ROOT, Project, compose_env, wait_for

pytestmark = [pytest.mark.lan]

LAN_OVERRIDE = ROOT / "tests" / "lan" / "compose.lan.yaml"
API = "_llmpi._tcp.local."
HTTP = "_http._tcp.local."
CALL = """
import sys, urllib.request, urllib.error
url, key = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
"""


def client(project: Project, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A command in a fresh `client` container: another device on the test's network."""
    return project.compose("--profile", "client", "run", "--rm", "--no-deps", "-T", "client", *args,
                           check=False, timeout=timeout)  # fmt: skip


def events(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def pihost_address(project: Project) -> str:
    out = project.compose("exec", "-T", "pihost", "hostname", "-i", check=False).stdout.split()
    assert out, "pihost has no address"
    return out[0]


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


def assert_announced_api(project: Project, hostname: str, address: str) -> None:
    """A client finds `llmpi on <hostname>` (_llmpi._tcp) at `<hostname>.local`, port 8080, on `address` alone, with
    its TXT records (never the key), and the keyed /v1/models answers at that address with the ids the TXT lists."""
    found = [e for e in events(client(project, "/opt/find/lanclient.py", API, "6").stdout) if e["event"] == "Added"]
    assert len(found) == 1, found
    e = found[0]
    assert e["name"] == f"llmpi on {hostname}.{API}" and e["server"] == f"{hostname}.local." and e["port"] == 8080, e
    assert e["addresses"] == [address], e  # the LAN address alone: no loopback, no Docker bridge of the server's
    txt = e["txt"]
    assert isinstance(txt, dict)
    assert txt["api"] == "/v1" and txt["auth"] == "key" and txt["version"] == "0.1.0", txt
    key = project.exec(["llmpi", "keys", "show"])[1].strip()
    assert key.startswith("sk-llmpi-") and all(key not in str(v) for v in txt.values())  # never the key
    url = f"http://{address}:8080{txt['api']}/models"
    assert client(project, "-c", CALL, url, "").stdout.strip() == "401"  # the address is reachable, and keyed
    status, _, body = client(project, "-c", CALL, url, key).stdout.partition(" ")
    assert status == "200", body
    ids = [m["id"] for m in json.loads(body)["data"]]
    assert txt["models"].split(",") == ids, (txt, ids)


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
    address = pihost_address(lan)
    done = client(lan, "/opt/find/find", "--address", "testpi")
    assert f"export OPENAI_BASE_URL=http://{address}:8080/v1" in done.stdout.splitlines(), done.stdout
    listed = json.loads(client(lan, "/opt/find/find", "--json").stdout)
    assert [(f["host"], f["port"], f["base_url"]) for f in listed] == [
        ("testpi.local", 8080, "http://testpi.local:8080/v1")
    ], listed
    done = client(lan, "/opt/find/find", "kitchen")
    assert done.returncode == 1 and "no appliance found matches 'kitchen'" in done.stderr, done.stderr


def seconds_to_goodbye(project: Project, stop: Callable[[], object], listen: int = 25) -> float:
    """Seconds from `stop()` to the Removed event a listening client sees for `_llmpi._tcp` (its goodbye); the
    client listens `listen` seconds in all."""
    cmd = ["docker", "compose", "-p", project.name]
    for f in project.files:
        cmd += ["-f", str(f)]
    cmd += [
        "--profile",
        "client",
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "client",
        "/opt/find/lanclient.py",
        API,
        str(listen),
    ]
    listener = subprocess.Popen(cmd, env=compose_env(project.env), stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        first = json.loads(listener.stdout.readline())
        assert first["event"] == "Added", first
        started_at = time.monotonic() - float(first["t"])  # the listener's clock started about then
        stopped_at = time.monotonic()
        stop()
        later = events("".join(iter(listener.stdout.readline, "")))  # read until the listener ends
        gone = next((e for e in later if e["event"] == "Removed"), None)
        assert gone is not None and gone["name"] == first["name"], later
        return float(str(gone["t"])) - (stopped_at - started_at)
    finally:
        listener.kill()
        listener.wait()


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
