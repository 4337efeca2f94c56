"""The channels between the boards: spiped, keyed with the cluster secret, on the head one encrypting end per
worker port (a supervisord program each); and LLMPI_WORKERS=auto's look at the workers the announcer heard.

Run before supervisord starts (`python3 -m llmpi.cluster.channels <configuration>`, from llmpi.process.supervisord):
it writes spiped's key file and prints the supervisord configuration to start with. spiped authenticates both ends
with the cluster secret and encrypts the traffic; a connection without the secret never reaches the RPC server.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..core import hosts, paths
from ..core.env import ConfigError
from ..core.files import read_no_follow, write_atomic, write_private
from ..core.settings import Settings, Worker, check_secret
from ..plan.split import info_tunnel, rpc_tunnel

AUTO_WAIT = 30.0  # LLMPI_WORKERS=auto: seconds a head waits at start for the workers announced on the network
AUTO_SETTLE = 6.0  # ... and for more after the first one is heard (the announcer browses every 10 s)
KEY_FILE_NAME = paths.CLUSTER_KEY_FILE  # the secret generated on the head, on its data volume


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def load_or_create_secret(path: Path) -> tuple[str, bool]:
    """The head's generated secret from the data volume, made (mode 0600) when there is none; True if new."""
    try:
        return check_secret(path.read_text(), str(path)), False
    except FileNotFoundError:
        pass
    secret = new_secret()
    write_private(path, secret + "\n")
    return secret, True


def write_key_file(path: Path, secret: str) -> None:
    """spiped's key file: the secret's bytes, nothing else (spiped keys on the SHA-256 of the whole file, so a
    trailing newline in one board's file and not another's would be a different key)."""
    write_private(path, secret)


def head_programs(workers: Sequence[Worker], key_file: Path) -> str:
    """supervisord programs for the head: an encrypting spiped end per worker port. `-D` waits for the name to
    resolve instead of exiting; spiped resolves it again every 60 s (a board that changed its address). Each
    worker's host must be an IP address or a host name, its port leave room for the info port, and the key file's
    path have no blank, % or control character (ConfigError otherwise): no newline or `%` reaches the configuration."""
    if not str(key_file).isprintable() or any(c in str(key_file) for c in " %"):
        raise ConfigError(f"the key file's path {str(key_file)!r} has a blank, % or a control character in it")
    out = []
    for i, w in enumerate(workers):
        if not hosts.is_host(w.host) or not hosts.is_port(w.port + 1):
            raise ConfigError(f"LLMPI_WORKERS: {w.host!r} port {w.port!r} is not an IP address or host name and a port")
        for what, local, remote in (("rpc", rpc_tunnel(i), w.port), ("info", info_tunnel(i), w.port + 1)):
            out.append(
                f"[program:channel-{what}-{i}]\n"
                f"command=spiped -F -D -e -s [127.0.0.1]:{local} -t {_socket(w.host, remote)} -k {key_file}\n"
                "autostart=true\nautorestart=true\nstartsecs=1\nstartretries=1000\n"
                "stdout_logfile=/dev/stdout\nstdout_logfile_maxbytes=0\n"
                "stderr_logfile=/dev/stderr\nstderr_logfile_maxbytes=0\n"
            )
    return "\n".join(out)


def _socket(host: str, port: int) -> str:
    return f"[{host}]:{port}" if hosts.is_ip(host) else f"{host}:{port}"


def heard_workers(announce_dir: Path) -> list[str]:
    """host:port of each worker the announcer heard on the network (workers.json, never read through a link), none
    when unreadable. An entry whose host is not an IP address or a host name, or whose port is not 1 to 65534 (the
    info port is the next one), is dropped with a line in the log."""
    try:
        heard = json.loads(read_no_follow(announce_dir / paths.WORKERS_FILE))
    except (OSError, ValueError):
        return []
    if not isinstance(heard, list):
        return []
    found = []
    for w in heard:
        host, port = (w.get("host"), w.get("port")) if isinstance(w, dict) else (None, 0)
        if hosts.is_host(host) and hosts.is_port(port) and isinstance(port, int) and port < 65535:
            found.append(f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}")
        else:
            print(
                f"llmpi: LLMPI_WORKERS=auto: ignoring {ascii(w)[:200]} in {paths.WORKERS_FILE}: not an IP address or"
                " host name and a port",
                file=sys.stderr,
                flush=True,
            )
    return found


def resolve_auto_workers(announce_dir: Path, wait: float = AUTO_WAIT, settle: float = AUTO_SETTLE) -> list[str]:
    """LLMPI_WORKERS=auto, at container start: the workers announced on the network (heard by this head's announce
    service), waiting up to `wait` seconds for the first and `settle` more for others; written for Settings."""
    print(
        f"llmpi: LLMPI_WORKERS=auto: looking for workers announced on the network (up to {wait:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    deadline = time.monotonic() + wait
    found = heard_workers(announce_dir)
    while not found and time.monotonic() < deadline:
        time.sleep(1)
        found = heard_workers(announce_dir)
    if found:
        time.sleep(settle)
        found = heard_workers(announce_dir)
    write_atomic(Path(paths.runtime_file(paths.AUTO_WORKERS)), ",".join(found) + "\n")
    print(f"llmpi: LLMPI_WORKERS=auto: {', '.join(found) or 'no worker found'}", file=sys.stderr, flush=True)
    return found


def prepare_channels(configuration: str, env: dict[str, str]) -> str:
    """At container start, before supervisord: spiped's key file from the cluster secret, and on a head with
    workers a supervisord configuration with a channel per worker port. Returns the configuration to run. A
    setting that is wrong is left to the launcher (or the worker), which refuses with the reason."""
    try:
        s = Settings.read(env)
        if s.workers_auto and not configuration.endswith("supervisord.worker.conf"):
            resolve_auto_workers(s.announce_dir)
            s = Settings.read(env)
    except ConfigError:
        return configuration
    worker = configuration.endswith("supervisord.worker.conf")
    if worker:
        if s.cluster_secret is None:
            return configuration
        secret = s.cluster_secret
    elif s.workers:
        secret = s.cluster_secret or ""
        if not secret:
            secret, new = load_or_create_secret(s.data_dir / KEY_FILE_NAME)
            if new:
                print(
                    f"llmpi: a cluster secret was generated and stored in {s.data_dir / KEY_FILE_NAME} (never "
                    "logged). Give it to each worker as LLMPI_CLUSTER_SECRET: docker compose exec llmpi llmpi "
                    "cluster secret",
                    file=sys.stderr,
                    flush=True,
                )
    else:
        return configuration
    key = Path(paths.runtime_file(paths.CLUSTER_KEY))
    write_key_file(key, secret)  # write_private makes the runtime directory (0700) when it is missing
    if worker:
        return configuration
    combined = Path(paths.runtime_file(paths.SUPERVISORD_CONF))
    combined.write_text(Path(configuration).read_text() + "\n" + head_programs(s.workers, key))
    return str(combined)


if __name__ == "__main__":
    # python3 -m llmpi.cluster.channels <supervisord configuration>: prints the configuration to start supervisord with
    try:
        print(prepare_channels(sys.argv[1], dict(os.environ)))
    except ConfigError as e:
        print(f"llmpi: no channels to the workers: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
