"""What the launcher sees of the machine: usable CPU cores and memory, container limits included."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

UNLIMITED_V1 = 1 << 60  # cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX * page size)


@dataclass(frozen=True)
class Memory:
    total: int  # bytes the model may use (before the launcher's reserve)
    source: str  # where that number came from, for messages


@dataclass(frozen=True)
class Hardware:
    cpus: int  # logical CPUs this process may run on (affinity, cgroup quota)
    physical_cores: int  # distinct cores among them (SMT siblings counted once)
    memory: Memory
    amx: bool = False  # x86 AMX tiles (Xeon Sapphire Rapids and later): llama.cpp's CPU backend then needs more memory


def has_amx(root: Path = Path("/")) -> bool:
    """The CPU advertises AMX (`amx_tile` among /proc/cpuinfo's flags); never on a Raspberry Pi."""
    info = _read(root / "proc/cpuinfo") or ""
    return any(line.startswith("flags") and " amx_tile" in line for line in info.splitlines())


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def meminfo_total(root: Path = Path("/")) -> int | None:
    text = _read(root / "proc/meminfo")
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def cgroup_memory_limit(root: Path = Path("/")) -> int | None:
    """The memory limit of this process's cgroup (v2 or v1), or None when there is none."""
    v2 = _read(root / "sys/fs/cgroup/memory.max")
    if v2 is not None:
        return None if v2 == "max" else int(v2)
    v1 = _read(root / "sys/fs/cgroup/memory/memory.limit_in_bytes")
    if v1 is not None:
        value = int(v1)
        return None if value >= UNLIMITED_V1 else value
    return None


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """CPUs' worth of time allowed by the cgroup (e.g. `docker run --cpus 2` -> 2.0), or None."""
    v2 = _read(root / "sys/fs/cgroup/cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota == "max" or not period:
            return None
        return int(quota) / int(period)
    v1 = root / "sys/fs/cgroup/cpu"
    q = _read(v1 / "cpu.cfs_quota_us")
    p = _read(v1 / "cpu.cfs_period_us")
    if q is None or p is None or int(q) <= 0:
        return None
    return int(q) / int(p)


def physical_cores(cpus: set[int], root: Path = Path("/")) -> int:
    """Distinct (package, core) pairs among `cpus`; falls back to len(cpus) where topology is not exposed."""
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topo = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
        core = _read(topo / "core_id")
        if core is None:
            return len(cpus)
        cores.add((_read(topo / "physical_package_id") or "0", core))
    return len(cores) or len(cpus)


def detect(root: Path = Path("/")) -> Hardware:
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = set(range(os.cpu_count() or 1))
    n_cpus = len(cpus)
    n_phys = physical_cores(cpus, root)
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        allowed = max(1, math.ceil(quota))
        n_cpus = min(n_cpus, allowed)
        n_phys = min(n_phys, allowed)
    host = meminfo_total(root)
    limit = cgroup_memory_limit(root)
    if limit is not None and (host is None or limit < host):
        memory = Memory(limit, "container memory limit")
    elif host is not None:
        memory = Memory(host, "system memory (MemTotal)")
    else:
        raise OSError("cannot read the amount of memory (no /proc/meminfo)")
    return Hardware(cpus=n_cpus, physical_cores=n_phys, memory=memory, amx=has_amx(root))


def planned(hw: Hardware, limit: int | None) -> Memory:
    """The memory to plan for, before the reserve: `limit` (LLMPI_MEMORY_LIMIT) when set, else the machine's (its
    container limit or MemTotal)."""
    return Memory(limit, "LLMPI_MEMORY_LIMIT") if limit is not None else hw.memory
