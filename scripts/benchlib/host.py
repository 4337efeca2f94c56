"""This machine and its processes, as a benchmark record states them: the commit, the CPU and memory, and the
resident memory of processes on the host or inside a container (read from /proc). Standard library only."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import ROOT


def sh(*cmd: str, check: bool = True, timeout: float | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, its output captured as text."""
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, **kw)


def container_port(container: str, port: int = 8080) -> int:
    """The host port that a container's `port` is published on (`docker port`)."""
    return int(sh("docker", "port", container, str(port), timeout=60).stdout.splitlines()[0].rsplit(":", 1)[1])


def git_commit() -> str:
    """The checkout's short commit; empty outside a git checkout."""
    return sh("git", "rev-parse", "--short", "HEAD", check=False, cwd=ROOT).stdout.strip()


def machine() -> dict[str, Any]:
    """The CPU (its model name, or a Raspberry Pi's `Model` line), how many, the memory, the architecture and the
    kernel."""
    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith(("model name", "Model"))
        )
    memory = 0
    with contextlib.suppress(OSError, StopIteration):
        memory = next(
            int(line.split()[1]) << 10
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    return {
        "arch": platform.machine(),
        "cpu": cpu or platform.processor(),
        "cpus": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "kernel": platform.release(),
    }


# --- resident memory --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """One process's resident memory in bytes: all of it (VmRSS), its peak (VmHWM), and the kernel's split into
    anonymous pages (its own allocations), file-backed pages (a mapped model file) and shared memory."""

    pid: int
    command: str  # the command line, arguments joined by spaces, cut at 80 characters
    program: str  # argv[0]
    rss: int
    hwm: int
    anon: int
    file: int
    shmem: int

    @property
    def key(self) -> str:
        """How a record names the process: "pid command line"."""
        return f"{self.pid} {self.command}"


def _proc(pid: int, status: str, cmdline: str) -> Proc | None:
    """A process from its /proc/<pid>/status and cmdline; None for one with no memory or no command line (a kernel
    thread, a zombie)."""
    kib = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in status.splitlines()) if v.strip()
           and k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")}  # fmt: skip
    argv = cmdline.split("\0")
    if "VmRSS" not in kib or not cmdline.replace("\0", " ").strip():
        return None
    return Proc(
        pid, cmdline.replace("\0", " ")[:80], argv[0], kib["VmRSS"] * 1024, kib.get("VmHWM", 0) * 1024,
        kib.get("RssAnon", 0) * 1024, kib.get("RssFile", 0) * 1024, kib.get("RssShmem", 0) * 1024,
    )  # fmt: skip


# run inside a container by `docker exec ... python3 -c`: every process's status and command line but its own
_PROCS_SCRIPT = (
    "import json, os\n"
    "out = []\n"
    "for p in os.listdir('/proc'):\n"
    "    if p.isdigit() and int(p) != os.getpid():\n"
    "        try:\n"
    "            out.append([int(p), open(f'/proc/{p}/status').read(), open(f'/proc/{p}/cmdline').read()])\n"
    "        except OSError:\n"
    "            continue\n"
    "print(json.dumps(out))\n"
)


def container_processes(container: str, timeout: float = 60) -> list[Proc]:
    """The processes in a running container (it needs python3, as the appliance's image has)."""
    out = sh("docker", "exec", container, "python3", "-c", _PROCS_SCRIPT, timeout=timeout).stdout
    found = (_proc(pid, status, cmdline) for pid, status, cmdline in json.loads(out))
    return [p for p in found if p is not None]


def host_processes(pids: list[int]) -> list[Proc]:
    """Processes of this machine by pid (a llama-server started by hand, a container's main process)."""
    found = (
        _proc(pid, Path(f"/proc/{pid}/status").read_text(), Path(f"/proc/{pid}/cmdline").read_text()) for pid in pids
    )
    return [p for p in found if p is not None]


def rss_by_process(container: str) -> dict[str, int]:
    """Resident bytes of each process in a container, keyed by "pid command line"."""
    return {p.key: p.rss for p in container_processes(container)}


def rss_of_main_process(container: str) -> int:
    """Resident bytes of a container's main process, read on the host (an image with no python3 inside)."""
    pid = int(sh("docker", "inspect", "-f", "{{.State.Pid}}", container).stdout.strip())
    return host_processes([pid])[0].rss
