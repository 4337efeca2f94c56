"""The appliance announced through the host's avahi-daemon (issue 14), on a network of the test's own: `avahihost`
stands for a Raspberry Pi OS host (the system D-Bus and avahi-daemon, Debian's configuration), the announcer is
forced onto avahi (LLMPI_ANNOUNCE=avahi) and reaches it through the D-Bus socket on a volume. A client container on
the same L2 segment finds the service under avahi's own host name, reaches the advertised address, and sees the
goodbye at stop; the host keeps its name (llmpi never answers for it, so nothing conflicts with avahi)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.compose_helpers import ARTIFACTS, COMPOSE_FILE, ROOT, Project, wait_for
from tests.lan.helpers import HTTP, LAN_OVERRIDE, assert_announced_api, client, events, seconds_to_goodbye

pytestmark = [pytest.mark.lan]

AVAHI_OVERRIDE = ROOT / "tests" / "lan" / "compose.avahi.yaml"
HOST = "avahipi"
THROUGH_AVAHI = "announcing through the host's avahi-daemon (D-Bus)"
RESOLVE = """
import sys
from zeroconf import AddressResolverIPv4, Zeroconf
zc = Zeroconf()
r = AddressResolverIPv4(sys.argv[1])
r.request(zc, 3000)
print(" ".join(r.parsed_addresses()))
zc.close()
"""


def announce_log(project: Project) -> str:
    return project.compose("logs", "--no-color", "--no-log-prefix", "announce", check=False).stdout


def host_log(project: Project) -> str:
    return project.compose("logs", "--no-color", "--no-log-prefix", "avahihost", check=False).stdout


def avahihost_address(project: Project) -> str:
    out = project.compose("exec", "-T", "avahihost", "getent", "hosts", HOST, check=False).stdout.split()
    assert out, "avahihost has no address"
    return out[0]


@pytest.fixture(scope="module")
def avahi(appliance_image: str) -> Iterator[Project]:
    project = Project(f"llmpi-avahi-{os.getpid()}", files=[COMPOSE_FILE, LAN_OVERRIDE, AVAHI_OVERRIDE])
    ARTIFACTS.mkdir(exist_ok=True)
    # the avahi host's image: Debian's avahi-daemon and dbus on the base image (seconds once its layers are cached)
    build = project.compose("build", "avahihost", check=False)
    (ARTIFACTS / "build-avahihost.log").write_text(build.stdout + build.stderr)
    assert build.returncode == 0, build.stderr
    try:
        project.up()
        wait_for(lambda: project.docker_health() == "healthy", 180, pause=1, what="llmpi healthy")
        wait_for(lambda: "announced:" in announce_log(project), 30, pause=1, what="announced through avahi")
        yield project
    finally:
        (ARTIFACTS / f"{project.name}-announce.log").write_text(announce_log(project))
        (ARTIFACTS / f"{project.name}-avahihost.log").write_text(host_log(project))
        project.down()


def test_a_client_finds_it_under_avahis_host_name_and_calls_the_api(avahi: Project) -> None:
    assert THROUGH_AVAHI in announce_log(avahi), announce_log(avahi)
    # the server is the name avahi answers for: llmpi publishes the service records alone
    assert_announced_api(avahi, HOST, avahihost_address(avahi))
    page = [e for e in events(client(avahi, "/opt/find/lanclient.py", HTTP, "4").stdout) if e["event"] == "Added"]
    assert [(e["name"], e["server"], e["txt"]) for e in page] == [
        (f"llmpi chat on {HOST}.{HTTP}", f"{HOST}.local.", {"path": "/"})
    ], page


def test_stop_says_goodbye(avahi: Project) -> None:
    """avahi withdraws the entry groups of an avahi-publish that ends: the service disappears from a listening
    client at `docker compose stop announce`, long before its records' TTL."""
    announced = announce_log(avahi).count("announced:")
    try:
        waited = seconds_to_goodbye(avahi, lambda: avahi.compose("stop", "announce"), listen=20)
        assert waited < 15, waited  # avahi's service records live 4500 s, the host's 120 s: this was the goodbye
    finally:
        avahi.compose("start", "announce")
        wait_for(lambda: announce_log(avahi).count("announced:") > announced, 60, pause=1, what="announced again")


def test_a_uid_the_host_does_not_know_is_turned_away(avahi: Project) -> None:
    """The D-Bus side of a Pi: dbus-daemon accepts the EXTERNAL authentication of any uid, then drops the connection
    of one missing from the host's own user database. The announcer runs as nobody (65534), which avahihost knows
    as every Debian host does (its image adds no user); the image's own uid 10001, or any other, is refused."""
    me = avahi.compose("exec", "-T", "announce", "id", "-u", check=False).stdout.strip()
    assert me == "65534", me
    known = avahi.compose("exec", "-T", "announce", "avahi-resolve", "--name", f"{HOST}.local", check=False)
    assert known.returncode == 0 and known.stdout.split()[0] == f"{HOST}.local", known.stdout + known.stderr
    for uid in ("10001", "4242"):
        unknown = avahi.compose("exec", "-T", "-u", uid, "announce", "avahi-resolve", "--name", f"{HOST}.local",
                                check=False)  # fmt: skip
        assert unknown.returncode != 0, unknown.stdout
        assert "Failed to create client object: An unexpected D-Bus error occurred" in unknown.stderr, unknown.stderr


def test_the_host_keeps_its_name(avahi: Project) -> None:
    """avahi never renamed the host (`avahipi-2`) over a conflict, through the announcements, goodbye and
    re-announcement above, and another device resolves the name to the host's address."""
    log = host_log(avahi)
    assert f"Server startup complete. Host name is {HOST}.local." in log, log
    assert "conflict" not in log.lower(), log
    resolved = client(avahi, "-c", RESOLVE, f"{HOST}.local.").stdout.split()
    assert resolved == [avahihost_address(avahi)], resolved
