"""An image built in the background while other tests run: the arm64 image's cross-build, started once the x86
image is built, at the lowest CPU priority, so that it takes the cores only while the x86 tests leave them idle
(containers starting and stopping, health checks, waits on facts) and the arm64 tests find it (nearly) ready.

The build runs inside Docker's BuildKit, not as a child of this process, so `nice` on the client would not reach
it; and each build step runs in a cgroup of its own (…/buildkit/<id>), beside the test containers' cgroups, which
share the CPU by their cgroups' weights whatever their processes' niceness (measured: a niced compiler took a whole
core from a loaded llama-server in a container). So while the build runs, a thread gives each step's cgroup that
runs a compiler (or the build's QEMU-run steps) the lowest CPU weight (cgroup v1 cpu.shares 2, v2 cpu.weight 1;
the step's cgroup goes away with the step) and its processes niceness 19. That needs root, as in CI; without it
the build simply competes for the cores, which costs time, not correctness."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.compose_helpers import ARTIFACTS, ROOT, compose_env, say

# what a llama.cpp build runs (its compiler driver aarch64-linux-gnu-g++ shows as "aarch64-linux-g")
BUILD_PROGRAMS = {"ninja", "cmake", "ccache", "cc1", "cc1plus", "as", "ld", "collect2", "lto1", "aarch64-linux-g"}
# a step of the arm64 build run under QEMU (its runtime stage's apt-get): only the build runs arm64 code meanwhile
QEMU_PREFIXES = (b"/usr/libexec/qemu-binfmt/", b"/usr/bin/qemu-aarch64")
LOWEST = 19  # niceness
LOWEST_SHARES, LOWEST_WEIGHT = "2", "1"  # cgroup v1 cpu.shares, v2 cpu.weight (the defaults: 1024, 100)
ARM64_IMAGE = os.environ.get("LLMPI_ARM64_IMAGE", "llmpi:arm64")
ARM64_LOG = "build-arm64.log"
ARM64_WHAT = "the arm64 image (cross-built, about 25 minutes the first time on 2 cores)"


@dataclass
class BackgroundBuild:
    what: str
    process: subprocess.Popen[bytes]
    log_name: str
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    reniced: set[int] = field(default_factory=set)  # processes seen
    lowered: set[Path] = field(default_factory=set)  # the cgroups' weight files written


def is_build_process(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether a process belongs to an image build: a compiler's program, or arm64 code run by QEMU."""
    try:
        comm = (proc / str(pid) / "comm").read_text().strip()
        argv0 = (proc / str(pid) / "cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return comm in BUILD_PROGRAMS or argv0.startswith(QEMU_PREFIXES)


def cpu_weight_file(pid: int, proc: Path = Path("/proc"), root: Path = Path("/sys/fs/cgroup")) -> Path | None:
    """The file that sets the CPU weight of a build step's cgroup (v1 cpu.shares or v2 cpu.weight), for a process
    in a BuildKit step's cgroup only; None for any other process."""
    try:
        lines = (proc / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    v2 = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "/buildkit/" not in path + "/":
            continue
        if "cpu" in controllers.split(","):
            mount = root / "cpu" if (root / "cpu").is_dir() else root / "cpu,cpuacct"
            return mount / path.lstrip("/") / "cpu.shares"
        if controllers == "":
            v2 = root / path.lstrip("/") / "cpu.weight"
    return v2


def lower_build_processes(
    build: BackgroundBuild, proc: Path = Path("/proc"), root: Path = Path("/sys/fs/cgroup")
) -> None:
    """Give every build process not yet seen the lowest CPU weight for its step's cgroup and niceness 19
    (processes that are gone, or not ours to change, are skipped and not tried again)."""
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in build.reniced or not is_build_process(int(entry.name), proc):
            continue
        build.reniced.add(int(entry.name))
        weight = cpu_weight_file(int(entry.name), proc, root)
        if weight is not None and weight not in build.lowered:
            build.lowered.add(weight)
            with contextlib.suppress(OSError):
                weight.write_text(LOWEST_SHARES if weight.name == "cpu.shares" else LOWEST_WEIGHT)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, int(entry.name), LOWEST)


def start(config: pytest.Config, what: str, cmd: list[str], log_name: str, env: Mapping[str, str]) -> BackgroundBuild:
    """Start `cmd` (an image build) in the background, its output in artifacts/<log_name>."""
    ARTIFACTS.mkdir(exist_ok=True)
    say(config, f"\nbuilding {what} in the background, at the lowest CPU priority (progress in artifacts/{log_name})")
    with (ARTIFACTS / log_name).open("wb") as log:
        process = subprocess.Popen(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    build = BackgroundBuild(what, process, log_name)

    def lower_while_running() -> None:
        while process.poll() is None and not build.done.wait(1.0):  # a look a second at what the build started
            lower_build_processes(build)

    threading.Thread(target=lower_while_running, daemon=True).start()
    return build


def finish(config: pytest.Config, build: BackgroundBuild, timeout: float = 3600) -> None:
    """Wait for the build; its failure fails the tests that need the image, with the end of its log."""
    say(config, f"\nwaiting for {build.what} (building in the background)")
    try:
        rc = build.process.wait(timeout)
    finally:
        build.done.set()
    tail = (ARTIFACTS / build.log_name).read_text(errors="replace")[-3000:]
    assert rc == 0, f"building {build.what} failed (exit {rc}); the end of artifacts/{build.log_name}:\n{tail}"
    say(config, f"built {build.what} in {time.monotonic() - build.started:.0f} s (in the background)")


def stop(build: BackgroundBuild) -> None:
    """At the end of the session: a build nobody waited for (its tests were deselected or failed first) is ended."""
    build.done.set()
    if build.process.poll() is None:
        build.process.terminate()
        build.process.wait(60)


def arm64_command() -> tuple[list[str], dict[str, str]]:
    """scripts/build-arm64, as the arm64 tests need it: the command and its environment."""
    return [str(ROOT / "scripts" / "build-arm64")], compose_env({"LLMPI_ARM64_IMAGE": ARM64_IMAGE})


ARM64_WANTED = pytest.StashKey[bool]()  # the session runs arm64 tests
ARM64_BUILD = pytest.StashKey[BackgroundBuild]()  # its arm64 image, building in the background
