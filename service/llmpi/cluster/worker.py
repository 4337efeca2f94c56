"""The worker role (`docker compose --profile worker up -d` on an extra board): llama.cpp's `ggml-rpc-server` on
the loopback, a description of the board for the head, and their encrypted ends (supervisord.worker.conf).

    python3 -m llmpi.cluster.worker serve     check the settings, then exec ggml-rpc-server
    python3 -m llmpi.cluster.worker describe  answer each connection with the board's description (JSON) and close
    python3 -m llmpi.cluster.worker health    the container's health check
"""

from __future__ import annotations

import json
import os
import platform
import socketserver
import sys
from pathlib import Path

from ..core import failure, paths
from ..core.env import CONFIG_ERROR_EXIT, ConfigError
from ..core.settings import WORKER_PORT, Settings
from ..host import hardware
from ..host.llama_build import own_versions
from . import wire

RPC_SERVER = "ggml-rpc-server"
RPC_LOCAL_PORT = 50152  # ggml-rpc-server on the worker's loopback
INFO_LOCAL_PORT = 50153  # the worker's description on its loopback


def key_file() -> Path:
    return Path(paths.runtime_file(paths.CLUSTER_KEY))


def description(s: Settings, hw: hardware.Hardware) -> dict[str, object]:
    """What the head needs to split the model: versions, memory for layers (as the launcher's own fit counts it),
    threads, architecture."""
    memory = hardware.planned(hw, s.memory_limit)
    reserve = s.memory_reserve
    return {
        **own_versions(),
        "arch": platform.machine(),
        "budget": memory.total - reserve,
        "budget_source": f"{memory.total >> 20} MiB {memory.source} minus a reserve of {reserve >> 20} MiB",
        "threads": s.threads or hw.physical_cores,
    }


def rpc_argv(s: Settings, hw: hardware.Hardware) -> list[str]:
    """ggml-rpc-server on the loopback (only spiped reaches it), one thread a physical core (its default is half the
    logical CPUs), with its tensor cache on the data volume (-c)."""
    threads = s.threads or hw.physical_cores or 1
    return [RPC_SERVER, "--host", "127.0.0.1", "--port", str(RPC_LOCAL_PORT), "--threads", str(threads), "-c"]


def refuse(reason: str) -> int:
    return failure.refuse(reason, "llmpi worker")


def serve() -> int:
    try:
        refused = failure.refused_reason()
        if refused is not None:
            return refuse(refused)
        s = Settings.read(os.environ)
        if s.cluster_secret is None:
            raise ConfigError(
                "a worker needs the cluster secret: set LLMPI_CLUSTER_SECRET (or LLMPI_CLUSTER_SECRET_FILE) to the "
                "head's (docker compose exec llmpi llmpi cluster secret, on the head)"
            )
        if not key_file().is_file():
            raise ConfigError(f"the channel's key file {key_file()} was not written at start")
        hw = hardware.detect()
        argv = rpc_argv(s, hw)
    except ConfigError as e:
        return refuse(str(e))
    # ggml-rpc-server keeps its tensor cache in $LLAMA_CACHE/rpc (made by it): tensors over 10 MiB that the head sent
    # before are not sent again after a restart
    env = dict(os.environ, LLAMA_CACHE=str(s.data_dir))
    env.pop("LLMPI_CLUSTER_SECRET", None)
    info = description(s, hw)
    print(
        f"llmpi worker: {info['arch']}, {argv[argv.index('--threads') + 1]} threads, "
        f"{int(str(info['budget'])) >> 20} MiB for layers ({info['budget_source']}); "
        f"llmpi {info['llmpi']}, llama.cpp {info['llama_cpp']}, RPC protocol {info['rpc']}; "
        f"listening on port {WORKER_PORT} through spiped",
        flush=True,
    )
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


class _Describe(socketserver.BaseRequestHandler):
    body = b"{}"

    def handle(self) -> None:
        self.request.sendall(self.body)


def describe_forever() -> int:
    """The description, one JSON object a connection (through spiped only: it listens on the loopback)."""
    try:
        s = Settings.read(os.environ)
    except ConfigError as e:
        print(f"llmpi worker: {e}", file=sys.stderr, flush=True)
        return CONFIG_ERROR_EXIT
    _Describe.body = json.dumps(description(s, hardware.detect())).encode()
    socketserver.TCPServer.allow_reuse_address = True
    with socketserver.TCPServer(("127.0.0.1", INFO_LOCAL_PORT), _Describe) as server:
        server.serve_forever()
    return 0


def listening_ports(proc: Path = Path("/proc/net")) -> set[int]:
    """TCP ports in LISTEN state in this network namespace (read from /proc: no connection to the one-client RPC
    server, which a probe would occupy)."""
    return {local for local, _, state in wire.tcp_sockets(proc, ("tcp", "tcp6")) if state == wire.LISTEN}


def health() -> int:
    refused = failure.refused_reason()
    if refused is not None:
        print(f"llmpi worker refused to start: {refused}")
        return 1
    wanted = {
        RPC_LOCAL_PORT: "ggml-rpc-server",
        INFO_LOCAL_PORT: "the description",
        WORKER_PORT: "the RPC channel (spiped)",
        WORKER_PORT + 1: "the description's channel (spiped)",
    }
    up = listening_ports()
    missing = [f"{what} (port {port})" for port, what in wanted.items() if port not in up]
    if missing:
        print("not listening yet: " + ", ".join(missing))
        return 1
    print(f"worker serving on port {WORKER_PORT}")
    return 0


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "serve":
        return serve()
    if command == "describe":
        return describe_forever()
    if command == "health":
        return health()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
