"""The RPC wire, as the head sees it: whether a worker answers, its description (versions, memory, cores) and its
RPC server's HELLO, both through the head's end of the channel (llmpi.cluster.channels), and what the head's
llama-server still holds (/proc/net/tcp). The checks llama.cpp's RPC engine leaves out (docs/cluster.md)."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Sequence
from pathlib import Path

from ..core.env import ConfigError
from ..core.settings import Worker
from ..plan.split import Board, info_tunnel, rpc_tunnel

RPC_CMD_HELLO = 14  # fixed in every protocol version (ggml-rpc.cpp static_assert)
RPC_CONN_CAPS = 24  # the HELLO request's transport capabilities (zeros: plain TCP)


class WorkerUnreachable(Exception):
    """A worker does not answer (yet): the head waits for it."""


def _connect(port: int, timeout: float) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def reachable(w: Worker, timeout: float = 3.0) -> str | None:
    """None when the worker's description port accepts a TCP connection; else why not. (Not the RPC port: spiped
    connects to what is behind it as soon as a peer connects, and ggml-rpc-server logs every connection.)"""
    try:
        socket.create_connection((w.host, w.port + 1), timeout=timeout).close()
        return None
    except OSError as e:
        return str(e.strerror or e)


def lost_channels(n_workers: int, proc: Path = Path("/proc/net")) -> list[int]:
    """The workers whose RPC channel the head's llama-server still holds although the other end has closed it
    (its connection to the tunnel's port in CLOSE_WAIT): the worker went away, and llama.cpp will find out only at
    its next call to it."""
    ports = {rpc_tunnel(i): i for i in range(n_workers)}
    return sorted({ports[remote] for _, remote, state in tcp_sockets(proc) if state == CLOSE_WAIT and remote in ports})


LISTEN, CLOSE_WAIT = "0A", "08"  # TCP states as /proc/net/tcp writes them


def tcp_sockets(proc: Path = Path("/proc/net"), tables: Sequence[str] = ("tcp",)) -> list[tuple[int, int, str]]:
    """(local port, remote port, state) of each TCP socket in this network namespace, from /proc (no connection
    made: the one-client RPC server must not be probed); a table that cannot be read counts as empty."""
    out = []
    for name in tables:
        try:
            lines = (proc / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3:
                out.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16), fields[3]))
    return out


def describe(i: int, w: Worker, timeout: float = 5.0) -> dict[str, object]:
    """The worker's description through its tunnel. spiped closes a channel without a word both when the secrets
    differ (its handshake failed) and when the worker's end has nothing behind it yet: the message names both."""
    why = reachable(w)
    if why is not None:
        raise WorkerUnreachable(f"{w.name} does not answer ({why})")
    data = b""
    try:
        with _connect(info_tunnel(i), timeout) as sock:
            while chunk := sock.recv(65536):
                data += chunk
    except ConnectionRefusedError:
        raise WorkerUnreachable(f"the channel to {w.name} is not up yet") from None
    except OSError:
        pass  # reset: as closed
    if not data:
        raise WorkerUnreachable(
            f"{w.name} accepted the connection but closed the encrypted channel: its cluster secret differs from "
            "this head's (set the same LLMPI_CLUSTER_SECRET on every board; the head's: docker compose exec llmpi "
            "llmpi cluster secret), or its llmpi is still starting"
        )
    try:
        info = json.loads(data)
    except ValueError:
        info = None
    if not isinstance(info, dict):  # cut short, or not an llmpi worker on that port: said while waiting
        raise WorkerUnreachable(f"{w.name} answered with something that is not an llmpi worker's description")
    return info


def hello(i: int, w: Worker, timeout: float = 10.0) -> str:
    """The RPC server's protocol version (major.minor.patch) from its HELLO answer, through the tunnel."""
    request = bytes([RPC_CMD_HELLO]) + struct.pack("<Q", RPC_CONN_CAPS) + bytes(RPC_CONN_CAPS)
    try:
        with _connect(rpc_tunnel(i), timeout) as sock:
            sock.sendall(request)
            size = _recv_exactly(sock, 8)
            if len(size) < 8:
                raise WorkerUnreachable(f"{w.name}: its RPC server closed the connection before answering HELLO")
            (n,) = struct.unpack("<Q", size)
            body = _recv_exactly(sock, min(n, 4096))
    except OSError as e:
        raise WorkerUnreachable(f"{w.name}: its RPC server does not answer ({e.strerror or e})") from None
    if n != 4 + RPC_CONN_CAPS or len(body) < 3:
        raise ConfigError(f"worker {w.name} answered HELLO with {n} bytes: not the RPC protocol this head speaks")
    return f"{body[0]}.{body[1]}.{body[2]}"


def check_versions(w: Worker, info: dict[str, object], rpc: str, own: dict[str, str]) -> None:
    """A worker must run the same llmpi, llama.cpp build and RPC protocol as the head; else a configuration error
    naming both."""
    theirs = {"llmpi": str(info.get("llmpi", "?")), "llama_cpp": str(info.get("llama_cpp", "?")), "rpc": rpc}
    for key, label in (("rpc", "RPC protocol"), ("llama_cpp", "llama.cpp build"), ("llmpi", "llmpi version")):
        if own[key] and theirs[key] != own[key]:
            raise ConfigError(
                f"worker {w.name} runs {label} {theirs[key]}, this head {own[key]}: every board needs the same "
                "llmpi image (update the older one, e.g. scripts/deploy-pi --worker)"
            )


def board_from(w: Worker, info: dict[str, object]) -> Board:
    try:
        budget = int(str(info["budget"]))
    except (KeyError, ValueError):
        raise ConfigError(f"worker {w.name} did not say how much memory it has") from None
    return Board(
        name=f"{w.name} ({info.get('arch', '?')})",
        budget=budget,
        source=str(info.get("budget_source", "")),
        arch=str(info.get("arch", "")),
        threads=int(str(info.get("threads", 0) or 0)),
    )
