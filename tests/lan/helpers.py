"""What the `lan` tests share: the compose override of the test's own network, the service types, a client device on
that network (a fresh `client` container) and what it prints, and the checks that an announcement is complete and
that a stop says goodbye. Test modules import from here, never from each other."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

from llmpi import __version__
from tests.compose_helpers import ROOT, Project, compose_env

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


def address_of(project: Project, service: str) -> str:
    """A service's address on the test's network."""
    out = project.compose("exec", "-T", service, "hostname", "-i", check=False).stdout.split()
    assert out, f"{service} has no address"
    return out[0]


def pihost_address(project: Project) -> str:
    return address_of(project, "pihost")


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
    assert txt["api"] == "/v1" and txt["auth"] == "key" and txt["version"] == __version__, txt
    key = project.exec(["llmpi", "keys", "show"])[1].strip()
    assert key.startswith("sk-llmpi-") and all(key not in str(v) for v in txt.values())  # never the key
    url = f"http://{address}:8080{txt['api']}/models"
    assert client(project, "-c", CALL, url, "").stdout.strip() == "401"  # the address is reachable, and keyed
    status, _, body = client(project, "-c", CALL, url, key).stdout.partition(" ")
    assert status == "200", body
    ids = [m["id"] for m in json.loads(body)["data"]]
    assert txt["models"].split(",") == ids, (txt, ids)


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
