"""The running llama-server, seen from beside it in the container: whether it serves, its process, and stopping it
so that supervisord starts the launcher again (with a new plan, or to reconnect a lost worker)."""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

from ..core import failure, paths

SERVER_NAME = "llama-server"


def router_running() -> bool:
    """The launcher started llama-server as a router (it wrote the models preset)."""
    return os.path.isfile(paths.runtime_file(paths.MODELS_PRESET))


def serves(port: int) -> bool:
    """llama-server answers /health with 200 on this port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def server_pid(proc: Path = Path("/proc")) -> int | None:
    """The process id of the llama-server that supervisord (PID 1) runs (the launcher became it; a router's
    children are its own children, not supervisord's)."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "")
        if Path(argv0.decode(errors="replace")).name == SERVER_NAME and ppid == "1":
            return int(entry.name)
    return None


def restart_server(served: bool) -> bool:
    """Stop llama-server (SIGTERM: it drains, exits, and supervisord starts the launcher again). `served`: it served
    before, so this stop is not a failed start (llmpi.core.failure.MAX_START_ATTEMPTS). False when none runs."""
    pid = server_pid()
    if pid is None:
        return False
    if served:
        failure.clear_start_attempts()
    os.kill(pid, signal.SIGTERM)
    return True
