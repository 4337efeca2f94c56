"""The appliance on the home network: DNS-SD over mDNS, from the compose service `announce` (host networking).

llama-server stays on its Docker bridge; multicast from a bridge does not reach the LAN, so this small process runs
in the host's network namespace and announces the port compose publishes:

  * `_llmpi._tcp` (the API; TXT: version, api=/v1, models, auth=key|none, ollama=<port> when the Ollama API is on;
    never a key) and `_http._tcp` (the page);
  * through the host's avahi-daemon when its D-Bus socket is mounted (Raspberry Pi OS runs avahi; two mDNS
    responders answering for one host name conflict), with `avahi-publish`, one process per service; else with
    python-zeroconf, answering for `<hostname>.local` on the LAN addresses only (never loopback, link-local or a
    Docker bridge's);
  * only while the server answers /health; withdrawn (a goodbye) when it stops answering and when this stops;
  * a cluster worker (`python3 -m llmpi.lan.announce worker`) announces `_llmpi-worker._tcp` instead, and a head with
    LLMPI_WORKERS=auto keeps the workers it hears in /announce/workers.json (llmpi.cluster.channels reads it).

It runs as `nobody` (group llmpi): the host's D-Bus turns away a uid that is not a user of the host, and nobody is
one on every Debian and Raspberry Pi OS. It shares only /announce with the server (compose's llmpi-announce
volume), never the data volume.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from .. import __version__
from ..core import hosts, paths
from ..core.env import ConfigError, get
from ..core.files import read_no_follow, write_atomic
from ..core.settings import WORKER_PORT, Settings
from ..host.llama_build import own_versions
from ..tls import certs
from . import discovery

DBUS_SOCKET = Path("/run/dbus/system_bus_socket")
CHECK_SECONDS = 5.0
DOWN_CHECKS = 3  # the server must miss this many health checks in a row before it is withdrawn
TXT_VALUE_MAX = 200  # a TXT string is at most 255 bytes, key included
# interfaces that are never the home network: loopback, Docker's and other container or VM bridges
SKIPPED_PREFIXES = ("lo", "docker", "br-", "veth", "virbr", "cni", "flannel", "podman", "vnet", "tap")


@dataclass(frozen=True)
class Service:
    """One DNS-SD service to announce."""

    type: str  # e.g. "_llmpi._tcp.local."
    name: str  # the instance name
    port: int
    txt: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    def publish(self, services: Sequence[Service]) -> None: ...  # replaces what was published (TXT changes too)
    def withdraw(self) -> None: ...  # a goodbye for everything published
    def close(self) -> None: ...


STATE_FILE = Path("/tmp/llmpi-announce.state")  # what this announcer is doing, for its health check


def log(message: str) -> None:
    print(f"llmpi-announce: {message}", flush=True)


def say_state(state: str) -> None:
    """The announcer's state in one line, for `python3 -m llmpi.lan.announce health` (its compose health check)."""
    with contextlib.suppress(OSError):
        STATE_FILE.write_text(state + "\n")


def health() -> int:
    """0 unless the announcer refused (a wrong setting, avahi forced but absent): then the reason and 1."""
    try:
        state = STATE_FILE.read_text().strip()
    except OSError:
        state = "starting"
    print(state)
    return 1 if state.startswith("refused") else 0


def lan_addresses(adapters: Sequence[tuple[str, Sequence[str]]], bind: str = "") -> list[str]:
    """The IPv4 addresses other devices of the home network reach this machine at: `adapters` is (interface name,
    its addresses); loopback, link-local and container/VM bridge interfaces are left out. `bind`: compose's
    LLMPI_BIND_ADDRESS (the port is published on that address alone when it is not 0.0.0.0)."""
    found = []
    for name, addresses in adapters:
        if name.startswith(SKIPPED_PREFIXES):
            continue
        for a in addresses:
            ip = ipaddress.ip_address(a)
            if ip.version == 4 and not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified):
                found.append(str(ip))
    if bind and bind not in ("0.0.0.0", "::"):
        found = [a for a in found if a == bind]
    return sorted(set(found), key=found.index)


def machine_adapters() -> list[tuple[str, list[str]]]:
    """This network namespace's interfaces and their addresses (ifaddr, python-zeroconf's own dependency)."""
    import ifaddr

    return [(a.nice_name, [ip.ip for ip in a.ips if isinstance(ip.ip, str)]) for a in ifaddr.get_adapters()]


def short_list(items: Sequence[str], limit: int = TXT_VALUE_MAX) -> str:
    """Comma-separated, cut to fit one TXT string: "a,b,+3" when the rest do not fit."""
    out: list[str] = []
    for i, item in enumerate(items):
        rest = len(items) - i
        candidate = ",".join([*out, item])
        if len(candidate) > limit - (len(f",+{rest}") if rest > 1 else 0):
            return ",".join([*out, f"+{rest}"])
        out.append(item)
    return ",".join(out)


def appliance_services(hostname: str, port: int, state: Mapping[str, object]) -> list[Service]:
    """What the head announces, from the launcher's announce.json: the API, and the page when it is on."""
    listed = state.get("models")
    models = [str(m) for m in listed] if isinstance(listed, list) else []
    txt = {
        "version": __version__,
        "api": "/v1",
        "models": short_list(models),
        "auth": "key" if state.get("auth", True) else "none",
    }
    if str(state.get("ollama") or "").isdigit():  # the Ollama API's port on this host (llmpi.ollama)
        txt["ollama"] = str(state["ollama"])
    if str(state.get("tls") or "").isdigit():  # HTTPS beside HTTP (llmpi.tls): its port, the CA's fingerprint
        txt["tls"] = "1"
        txt["tls_port"] = str(state["tls"])
        if state.get("ca"):
            txt["ca"] = str(state["ca"])
    services = [Service(discovery.SERVICE_TYPE, f"llmpi on {hostname}", port, txt)]
    if state.get("webui", True):
        services.append(Service(discovery.HTTP_TYPE, f"llmpi chat on {hostname}", port, {"path": "/"}))
    return services


def worker_services(hostname: str, versions: Mapping[str, str]) -> list[Service]:
    """What a worker announces: its RPC port, and the versions a head compares (llmpi.host.llama_build.own_versions)."""
    txt = {"version": versions["llmpi"], "llama_cpp": versions["llama_cpp"], "rpc": versions["rpc"]}
    return [Service(discovery.WORKER_TYPE, f"llmpi worker on {hostname}", WORKER_PORT, txt)]


class ZeroconfBackend:
    """python-zeroconf, answering for `<hostname>.local` on the given addresses only."""

    def __init__(self, hostname: str, addresses: Sequence[str]) -> None:
        from zeroconf import Zeroconf

        self.server = f"{hostname}.local."
        self.addresses = list(addresses)
        self.zc = Zeroconf(interfaces=self.addresses)
        self.published: dict[str, Service] = {}  # by service type

    def publish(self, services: Sequence[Service]) -> None:
        """Registers a new service, updates one whose records changed, and sends nothing for one that did not: the
        network hears from this responder only when something changes (and when asked)."""
        from zeroconf import ServiceInfo

        for s in services:
            if self.published.get(s.type) == s:
                continue
            info = ServiceInfo(
                s.type,
                f"{s.name}.{s.type}",
                port=s.port,
                properties=dict(s.txt),
                server=self.server,
                parsed_addresses=self.addresses,
            )
            if s.type in self.published:
                self.zc.update_service(info)
            else:
                self.zc.register_service(info, allow_name_change=True)
            self.published[s.type] = s

    def withdraw(self) -> None:
        if self.published:
            self.zc.unregister_all_services()  # sends the goodbyes (TTL 0)
            self.published.clear()

    def close(self) -> None:
        self.withdraw()
        self.zc.close()


class AvahiBackend:
    """The host's avahi-daemon over its D-Bus socket: one `avahi-publish -s` per service; avahi answers for the
    host's own name and addresses. A TXT change republishes (avahi-publish cannot update one)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.published: list[Service] = []

    def publish(self, services: Sequence[Service]) -> None:
        if list(services) == self.published and all(p.poll() is None for p in self.procs):
            return
        self.withdraw()
        for s in services:
            argv = ["avahi-publish", "-s", s.name, s.type.removesuffix(".local."), str(s.port)]
            argv += [f"{k}={v}" for k, v in s.txt.items()]
            self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        self.published = list(services)
        time.sleep(1.0)
        for p in self.procs:
            if p.poll() is not None:
                err = (p.stderr.read() if p.stderr else b"").decode(errors="replace").strip()
                self.withdraw()
                raise OSError(f"avahi-publish failed: {err or f'exit {p.returncode}'}")

    def withdraw(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()  # avahi frees the entry group of a client that leaves: its goodbye
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()
        self.published = []

    def close(self) -> None:
        self.withdraw()


def avahi_problem() -> str | None:
    """None when the host's avahi-daemon answers through the mounted D-Bus socket; else why not."""
    if not DBUS_SOCKET.is_socket():
        return f"no D-Bus socket at {DBUS_SOCKET}"
    try:
        # a failed lookup means the daemon answered; "Failed to create client object: ..." that it did not
        probe = subprocess.run(
            ["avahi-resolve", "--name", "localhost.invalid"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"avahi-resolve: {e}"
    failed = [line for line in probe.stderr.splitlines() if "Failed to create client" in line]
    if not failed:
        return None
    if "Daemon not running" in failed[0]:
        return "avahi-daemon is not running on the host"
    # dbus-daemon drops a client whose uid the host does not know (docs/discovery.md)
    return f"the host's D-Bus turned uid {os.getuid()} away ({failed[0].strip()})"


def choose_backend(mode: str, hostname: str, addresses: Sequence[str]) -> Backend:
    problem = avahi_problem() if mode in ("auto", "avahi") else "LLMPI_ANNOUNCE=zeroconf"
    if problem is None:
        log("announcing through the host's avahi-daemon (D-Bus)")
        return AvahiBackend()
    if mode == "avahi":
        raise ConfigError(
            f"LLMPI_ANNOUNCE=avahi but avahi cannot be used: {problem} (is avahi-daemon running on the host, and "
            "/run/dbus mounted into the announce service?)"
        )
    log(f"not through avahi: {problem}")
    log(f"announcing with python-zeroconf as {hostname}.local on {', '.join(addresses)}")
    return ZeroconfBackend(hostname, addresses)


def server_answers(url: str) -> bool:
    """Whether llama-server (or the launcher's status page) answers at all: any HTTP status counts."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def read_state(announce_dir: Path) -> dict[str, object]:
    """What the launcher asked to announce (announce.json, never read through a link), {} when unreadable."""
    try:
        state = json.loads(read_no_follow(announce_dir / paths.ANNOUNCE_FILE))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def workers_heard(found: Sequence[discovery.Found]) -> list[dict[str, object]]:
    """The workers as the head reaches them: an address (the head's container cannot resolve .local), the port. An
    answer on the network whose address or port is not one (llmpi.core.hosts) is left out, with a line in the log."""
    heard: list[dict[str, object]] = []
    for f in found:
        if not f.ipv4s:
            continue
        if not hosts.is_ip(f.ipv4s[0]) or not hosts.is_port(f.port):
            log(
                f"ignoring the worker {ascii(f.name)[:100]}: {ascii(f.ipv4s[0])[:60]} port {ascii(f.port)[:20]} is not"
                " an IP address and a port"
            )
            continue
        heard.append({"host": f.ipv4s[0], "port": f.port, "name": f.name, "version": f.txt.get("version", "")})
    return heard


def watch_workers(announce_dir: Path, stop: threading.Event) -> None:
    """LLMPI_WORKERS=auto on a head: the workers announced on the network, kept in announce_dir/workers.json."""
    last: list[dict[str, object]] | None = None
    while not stop.is_set():
        try:
            heard = workers_heard(discovery.browse(discovery.WORKER_TYPE, discovery.BROWSE_SECONDS))
        except OSError as e:
            log(f"cannot browse for workers: {e}")
            heard = []
        if heard != last:
            write_atomic(announce_dir / paths.WORKERS_FILE, json.dumps(heard, indent=1))
            log(f"workers on the network: {', '.join(str(w['host']) for w in heard) or 'none'}")
            last = heard
        stop.wait(10)


@dataclass
class Announcer:
    """Publishes while the server answers, withdraws after DOWN_CHECKS missed checks and at stop."""

    backend: Backend
    services_now: Callable[[], list[Service]]
    server_up: Callable[[], bool]
    published: bool = False
    missed: int = 0

    def step(self) -> None:
        up = self.server_up()
        if up:
            self.missed = 0
            services = self.services_now()
            self.backend.publish(services)
            if not self.published:
                log("announced: " + "; ".join(f"{s.name} ({s.type}, port {s.port})" for s in services))
            self.published = True
        else:
            self.missed += 1
            if self.published and self.missed >= DOWN_CHECKS:
                self.backend.withdraw()
                self.published = False
                log("the server does not answer: withdrawn until it does")


def write_host_facts(announce_dir: Path, bind: str) -> None:
    """The host's name and its addresses on the network, for the HTTPS certificate the launcher makes (only this
    service sees them: it runs on the host's network). Written whatever LLMPI_ANNOUNCE says: it tells no one."""
    facts = {"hostname": socket.gethostname().split(".")[0], "addresses": lan_addresses(machine_adapters(), bind)}
    try:
        write_atomic(announce_dir / paths.HOST_FILE, json.dumps(facts))
    except OSError as e:
        log(f"cannot write {announce_dir / paths.HOST_FILE}: {e}")


def tell_announcer(s: Settings, models: list[str], out: TextIO) -> None:
    """What the announce service (this module) tells the network, in the directory they share: the model ids,
    whether a key is needed, whether the page is on; never a key. Serving does not depend on it: where the directory
    cannot be written (a `docker run` without it on a read-only root), the log says so and the server starts."""
    ollama = s.ollama_host_port if s.ollama_port is not None and s.ollama_host_port.isdigit() else None
    state: dict[str, object] = {"models": models, "auth": s.auth, "webui": s.webui, "ollama": ollama}
    ca = certs.served_files(s).ca if s.tls else None
    if s.tls and s.tls_host_port.isdigit():  # HTTPS (llmpi.tls): its port, and the local CA's fingerprint to check
        state["tls"] = s.tls_host_port
        state["ca"] = certs.pem_fingerprint(ca) if ca is not None and ca.is_file() else ""
    try:
        write_atomic(s.announce_dir / paths.ANNOUNCE_FILE, json.dumps(state))
    except OSError as e:
        print(f"llmpi: the network announcement lists no models: cannot write {s.announce_dir}: {e}", file=out)


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    role = argv[0] if argv else "appliance"
    if role == "health":
        return health()
    try:
        s = Settings.read(env)
    except ConfigError as e:
        refused(str(e))
        return idle()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if role == "appliance" and s.workers_auto:
        threading.Thread(target=watch_workers, args=(s.announce_dir, stop), daemon=True).start()
    if role == "appliance":
        write_host_facts(s.announce_dir, get(env, "LLMPI_BIND_ADDRESS"))
    if s.announce == "off":
        log("LLMPI_ANNOUNCE=off: announcing nothing")
        say_state("off")
        stop.wait()
        return 0
    hostname = socket.gethostname().split(".")[0]
    bind = get(env, "LLMPI_BIND_ADDRESS")
    try:
        services_now, server_up = role_services(role, hostname, s, bind)
    except ValueError as e:
        refused(str(e))
        return idle(stop)
    session = Session(s.announce, hostname, bind, services_now, server_up)
    try:
        while not stop.is_set():
            session.tick(machine_adapters())
            stop.wait(CHECK_SECONDS)
    except (ConfigError, OSError) as e:  # avahi forced but unusable, or python-zeroconf cannot bind
        refused(str(e))
        return idle(stop)
    finally:
        if session.close():
            log("stopped: goodbye sent")
    return 0


@dataclass
class Session:
    """The announcer's life: the addresses it announces on (read again at each check: DHCP, or Wi-Fi that comes up
    after the containers at boot, changes them), and a backend for them."""

    mode: str
    hostname: str
    bind: str
    services_now: Callable[[], list[Service]]
    server_up: Callable[[], bool]
    addresses: list[str] | None = None  # None: not looked yet
    announcer: Announcer | None = None

    def tick(self, adapters: Sequence[tuple[str, Sequence[str]]]) -> None:
        found = lan_addresses(adapters, self.bind)
        if found != self.addresses:
            self.close()
            self.addresses = found
            if not found:
                no_address(self.bind)
            else:
                backend = choose_backend(self.mode, self.hostname, found)
                self.announcer = Announcer(backend, self.services_now, self.server_up)
        if self.announcer is not None:
            step(self.announcer)

    def close(self) -> bool:
        """Withdraws what is announced (the goodbye); whether there was a backend to close."""
        if self.announcer is None:
            return False
        self.announcer.backend.close()
        self.announcer = None
        return True


def role_services(
    role: str, hostname: str, s: Settings, bind: str
) -> tuple[Callable[[], list[Service]], Callable[[], bool]]:
    """What to announce and when: a worker always its RPC port; the appliance its API and page while it answers."""
    if role == "worker":
        versions = own_versions()
        return (lambda: worker_services(hostname, versions)), (lambda: True)
    if not s.host_port.isdigit() or not 0 < int(s.host_port) < 65536:
        raise ValueError(f"LLMPI_HOST_PORT={s.host_port!r} is not a port")
    port = int(s.host_port)
    local = bind if bind and bind not in ("0.0.0.0", "::") else "127.0.0.1"
    return (lambda: appliance_services(hostname, port, read_state(s.announce_dir))), (
        lambda: server_answers(f"http://{local}:{port}")
    )


def no_address(bind: str) -> None:
    published_alone = f"; the port is published on {bind} alone" if bind and bind not in ("0.0.0.0", "::") else ""
    log(f"no home-network address to announce on (only loopback or container bridges{published_alone}): waiting")
    say_state("no home-network address: announcing nothing")


def step(announcer: Announcer) -> None:
    try:
        announcer.step()
        say_state("announcing" if announcer.published else "waiting for the server to answer")
    except OSError as e:
        log(f"announcing failed, retrying: {e}")
        say_state(f"failing, retrying: {e}")


def refused(reason: str) -> None:
    log(f"refused: {reason}")
    say_state(f"refused: {reason}")


def idle(stop: threading.Event | None = None) -> int:
    """A setting is wrong: say so once and wait for the stop (a restart would only repeat the refusal)."""
    (stop or threading.Event()).wait()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:], os.environ))
