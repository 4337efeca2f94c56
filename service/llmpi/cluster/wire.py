"""Several boards, one model: llama.cpp's RPC engine (`ggml-rpc-server` on each worker, `llama-server --rpc` on
the head) behind spiped, with the checks the engine leaves out (docs/cluster.md).

Ports. A worker publishes two: PORT (default 50052) for the RPC server and PORT+1 for its description (versions,
memory, cores), each through a spiped decrypting end; behind them `ggml-rpc-server` and the description listen on
the worker's loopback only. The head runs one spiped encrypting end per worker port, listening on its own loopback
(TUNNEL_BASE + 2 i and + 1), and llama-server connects to those. spiped authenticates both ends with the cluster
secret and encrypts the traffic; a connection without the secret never reaches the RPC server.
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import fit, keys
from .config import ConfigError, write_atomic

WORKER_PORT = 50052  # published on the worker; PORT + 1 is its description
RPC_LOCAL_PORT = 50152  # ggml-rpc-server on the worker's loopback
INFO_LOCAL_PORT = 50153  # the worker's description on its loopback
TUNNEL_BASE = 51000  # the head's loopback ends of the tunnels: 51000 + 2 i (RPC), 51001 + 2 i (description)
LLAMA_DIR = Path("/opt/llama")
VERSION_FILE = LLAMA_DIR / "version.json"  # written by the image build: llama.cpp's build and the RPC protocol
AUTO_WAIT = 30.0  # LLMPI_WORKERS=auto: seconds a head waits at start for the workers announced on the network
AUTO_SETTLE = 6.0  # ... and for more after the first one is heard (the announcer browses every 10 s)
WORKERS_FILE = "workers.json"  # the workers the head's announcer hears (llmpi.announce), in Settings.announce_dir
KEY_FILE_NAME = "cluster.key"  # the secret generated on the head, on its data volume
MIN_SECRET = 32  # characters; the generated one has 256 bits (43 characters)
RPC_CMD_HELLO = 14  # fixed in every protocol version (ggml-rpc.cpp static_assert)
RPC_CONN_CAPS = 24  # the HELLO request's transport capabilities (zeros: plain TCP)
# the RPC server's own use beside the layers it holds: its process and its compute buffers (one micro-batch of
# activations for its share of the graph)
WORKER_OVERHEAD = 48 * fit.MiB


class WorkerUnreachable(Exception):
    """A worker does not answer (yet): the head waits for it."""


@dataclass(frozen=True)
class Worker:
    host: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Board:
    """What one board offers the model: memory for layers, and what the fit table says about it."""

    name: str
    budget: int  # bytes usable (memory minus reserve)
    source: str  # where that number came from
    arch: str = ""
    threads: int = 0


@dataclass(frozen=True)
class Split:
    """Layers per board: the head's first, then each worker's in LLMPI_WORKERS order."""

    layers: tuple[int, ...]
    per_layer: int  # bytes a layer takes with its KV cache
    head_fixed: int  # bytes the head needs beside its layers
    boards: tuple[Board, ...]

    @property
    def worker_layers(self) -> int:
        return sum(self.layers[1:])

    def table(self) -> str:
        return board_table(self.boards, self.layers, self.per_layer, self.head_fixed)


HEAD = "this board (head)"


def with_head(budget: int, source: str, workers: Sequence[Board]) -> tuple[Board, ...]:
    """The boards of a plan: this one (the head) first, then the workers; none when there are no workers."""
    return (Board(HEAD, budget, source), *workers) if workers else ()


def parse_workers(text: str) -> tuple[Worker, ...]:
    """LLMPI_WORKERS: `host[:port],...` (port defaults to 50052)."""
    out: list[Worker] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        if item.startswith("[") and "]:" in item:  # [IPv6]:port
            host, _, port_text = item[1:].partition("]:")
        elif item.count(":") == 1:  # host:port
            host, _, port_text = item.partition(":")
        else:  # host, [IPv6] or a bare IPv6 address
            host, port_text = item.strip("[]"), str(WORKER_PORT)
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"LLMPI_WORKERS: {item!r} is not host[:port]") from None
        if not host or not 0 < port < 65535:
            raise ConfigError(f"LLMPI_WORKERS: {item!r} is not host[:port] (port 1-65534)")
        if any(w.host == host and w.port == port for w in out):
            raise ConfigError(f"LLMPI_WORKERS names {host}:{port} twice")
        out.append(Worker(host, port))
    return tuple(out)


def check_secret(secret: str, origin: str) -> str:
    """The cluster secret without surrounding blanks; refused when too short to be a key."""
    value = secret.strip()
    if len(value) < MIN_SECRET:
        raise ConfigError(
            f"{origin} is {len(value)} characters long; the cluster secret needs at least {MIN_SECRET} "
            "(use the one the head generated: docker compose exec llmpi llmpi cluster secret)"
        )
    if any(c.isspace() for c in value):
        raise ConfigError(f"{origin} contains blanks; the cluster secret is one word")
    return value


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def load_or_create_secret(path: Path) -> tuple[str, bool]:
    """The head's generated secret from the data volume, made (mode 0600) when there is none; True if new."""
    try:
        return check_secret(path.read_text(), str(path)), False
    except FileNotFoundError:
        pass
    secret = new_secret()
    keys.write_private(path, secret + "\n")
    return secret, True


def write_key_file(path: Path, secret: str) -> None:
    """spiped's key file: the secret's bytes, nothing else (spiped keys on the SHA-256 of the whole file, so a
    trailing newline in one board's file and not another's would be a different key)."""
    keys.write_private(path, secret)


def rpc_tunnel(i: int) -> int:
    return TUNNEL_BASE + 2 * i


def info_tunnel(i: int) -> int:
    return TUNNEL_BASE + 2 * i + 1


def head_programs(workers: Sequence[Worker], key_file: Path) -> str:
    """supervisord programs for the head: an encrypting spiped end per worker port. `-D` waits for the name to
    resolve instead of exiting; spiped resolves it again every 60 s (a board that changed its address)."""
    out = []
    for i, w in enumerate(workers):
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
    return f"[{host}]:{port}" if ":" in host or host.replace(".", "").isdigit() else f"{host}:{port}"


def own_versions() -> dict[str, str]:
    """This image's llmpi version, llama.cpp build and RPC protocol version."""
    from . import __version__

    try:
        built = json.loads(VERSION_FILE.read_text())
    except (OSError, ValueError):
        built = {}
    return {"llmpi": __version__, "llama_cpp": str(built.get("llama_cpp", "")), "rpc": str(built.get("rpc", ""))}


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


def parameters(shape: fit.ModelShape) -> int:
    """The model's parameters: the GGUF's count when it is one (it holds at least the token embeddings), else
    estimated from the shape (attention Q, K, V, O and a gated feed-forward a layer, plus the embeddings)."""
    embeddings = shape.n_vocab * shape.n_embd
    if shape.n_params > embeddings:
        return shape.n_params
    n_ff = shape.n_ff or 4 * shape.n_embd
    per_layer = shape.n_embd * (2 * shape.n_embd + shape.k_width + shape.v_width) + 3 * shape.n_embd * n_ff
    return max(1, shape.n_layer * per_layer + embeddings)


def layer_bytes(shape: fit.ModelShape, est: fit.Estimate) -> tuple[int, int]:
    """(bytes of one repeating layer with its share of the KV cache, bytes that stay on the head whatever the
    split). The token embeddings and the output weights stay on the head (server_args); their size is the
    embedding matrix's share of the parameters."""
    n_layer = max(1, shape.n_layer)
    embedding_params = shape.n_vocab * shape.n_embd
    embeddings = int(shape.weights_bytes * min(0.95, embedding_params / parameters(shape)))
    per_layer = (shape.weights_bytes - embeddings + est.kv_cache) // n_layer
    return per_layer, est.total - per_layer * n_layer


def board_table(boards: Sequence[Board], layers: Sequence[int], per_layer: int, head_fixed: int) -> str:
    """One line a board: what it has, what its share needs."""
    lines = []
    for i, (b, n) in enumerate(zip(boards, layers, strict=True)):
        need = n * per_layer + (head_fixed if i == 0 else WORKER_OVERHEAD)
        lines.append(
            f"  {b.name}: {n} layers, needs {fit.fmt_bytes(need)} of {fit.fmt_bytes(b.budget)}"
            + (f" ({b.source})" if b.source else "")
        )
    return "\n".join(lines)


def split_layers(shape: fit.ModelShape, est: fit.Estimate, boards: Sequence[Board]) -> Split:
    """Layers per board in proportion to the memory each has left for layers (the head's after the embeddings,
    output, compute buffers, prompt cache and whatever else it holds); FitError with the table per board when the
    boards together cannot hold the model."""
    per_layer, head_fixed = layer_bytes(shape, est)
    n_layer = max(1, shape.n_layer)
    room = [boards[0].budget - head_fixed] + [b.budget - WORKER_OVERHEAD for b in boards[1:]]
    capacity = [max(0, r // max(1, per_layer)) for r in room]
    if room[0] < 0 or sum(capacity) < n_layer:
        raise fit.FitError(
            f"the model does not fit across {len(boards)} boards: {n_layer} layers of about "
            f"{fit.fmt_bytes(per_layer)} each (with their KV cache), and the head needs "
            f"{fit.fmt_bytes(head_fixed)} beside its layers ({est.breakdown()} in all); room for "
            f"{sum(capacity)} layers:\n"
            + board_table(boards, [min(c, n_layer) for c in capacity], per_layer, head_fixed)
            + "\nAdd a board, use a smaller model or quantization, or a smaller LLMPI_CTX_SIZE / LLMPI_PARALLEL."
        )
    total = sum(capacity)
    layers = [min(c, n_layer * c // total) for c in capacity]
    # the layers rounding left over: one each to the boards with the largest remainders (that have room)
    order = sorted(range(len(boards)), key=lambda k: (n_layer * capacity[k] % total, capacity[k]), reverse=True)
    while sum(layers) < n_layer:
        for i in order:
            if sum(layers) < n_layer and layers[i] < capacity[i]:
                layers[i] += 1
    return Split(tuple(layers), per_layer, head_fixed, tuple(boards))


# the output layer's weights (or, with tied embeddings, the token embeddings it reuses) stay in the head's memory
KEEP_ON_HEAD = "^(token_embd|output)[.]weight$=CPU"


def server_args(split: Split, n_workers: int) -> list[str]:
    """llama-server's cluster options: the tunnels as RPC servers, the workers' layers (the last ones; the head
    keeps the first), their shares, no automatic fit, and the head's own layers in the layout the workers use (no
    repacking; docs/cluster.md: identical output).

    llama.cpp counts the output layer as one more layer after the last: `--n-gpu-layers N` offloads it and N - 1
    repeating layers, to the last device. So N is the workers' layers + 1, the last worker's share has the output
    layer's 1, and the output weights are kept on the head (`--override-tensor`): else the last worker would hold a
    copy of the embedding matrix (Gemma 3 270M: 160 MiB) and send the logits over the network at every token
    (docs/cluster.md "Speed": 1 MB a token, 0.6 times the speed through spiped). A vision projector stays on the
    head too (upstream would put it on the first RPC device)."""
    shares = [*split.layers[1:]]
    shares[-1] += 1
    return [
        "--rpc",
        ",".join(f"127.0.0.1:{rpc_tunnel(i)}" for i in range(n_workers)),
        "--fit",
        "off",
        "--n-gpu-layers",
        str(split.worker_layers + 1),
        "--tensor-split",
        ",".join(str(n) for n in shares),
        "--override-tensor",
        KEEP_ON_HEAD,
        "--no-mmproj-offload",  # a vision model's projector on the head, where the fit counts it
        "--no-repack",
    ]


def auto_workers_path() -> str:
    """LLMPI_WORKERS=auto: the workers this container found at its start, as host:port,... (Settings reads it)."""
    from .markers import runtime_dir_path

    return str(Path(runtime_dir_path()) / "workers.auto")


def heard_workers(announce_dir: Path) -> list[str]:
    """host:port of each worker the announcer heard on the network (workers.json), none when unreadable."""
    try:
        heard = json.loads((announce_dir / WORKERS_FILE).read_text())
        return [f"{w['host']}:{int(w['port'])}" for w in heard if isinstance(w, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def resolve_auto_workers(announce_dir: Path, wait: float = AUTO_WAIT, settle: float = AUTO_SETTLE) -> list[str]:
    """LLMPI_WORKERS=auto, at container start: the workers announced on the network (heard by this head's announce
    service), waiting up to `wait` seconds for the first and `settle` more for others; written for Settings."""
    import time

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
    write_atomic(Path(auto_workers_path()), ",".join(found) + "\n")
    print(f"llmpi: LLMPI_WORKERS=auto: {', '.join(found) or 'no worker found'}", file=sys.stderr, flush=True)
    return found


def prepare_channels(configuration: str, env: dict[str, str]) -> str:
    """At container start, before supervisord: spiped's key file from the cluster secret, and on a head with
    workers a supervisord configuration with a channel per worker port. Returns the configuration to run. A
    setting that is wrong is left to the launcher (or the worker), which refuses with the reason."""
    from .config import runtime_dir
    from .settings import Settings

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
    key = runtime_dir() / KEY_FILE_NAME
    write_key_file(key, secret)
    if worker:
        return configuration
    combined = runtime_dir() / "supervisord.conf"
    combined.write_text(Path(configuration).read_text() + "\n" + head_programs(s.workers, key))
    return str(combined)


if __name__ == "__main__":
    # python3 -m llmpi.cluster <supervisord configuration>: prints the configuration to start supervisord with
    import os

    print(prepare_channels(sys.argv[1], dict(os.environ)))
