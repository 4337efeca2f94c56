"""An image built in the background while other tests run: the arm64 image's cross-build, started once the x86
image is built, at the lowest CPU priority, so that it takes the cores only while the x86 tests leave them idle
(containers starting and stopping, health checks, waits on facts) and the arm64 tests find it (nearly) ready.

The build runs inside Docker's BuildKit, not as a child of this process, so `nice` on the client would not reach
it: while it runs, a thread gives each compiler process (and the build's QEMU-run steps) niceness 19, a change a
process's children inherit. That needs the right to renice them (root, as in CI); without it the build simply
competes for the cores, which costs time, not correctness."""

from __future__ import annotations

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
LOWEST = 19
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
    reniced: set[int] = field(default_factory=set)


def is_build_process(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether a process belongs to an image build: a compiler's program, or arm64 code run by QEMU."""
    try:
        comm = (proc / str(pid) / "comm").read_text().strip()
        argv0 = (proc / str(pid) / "cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return comm in BUILD_PROGRAMS or argv0.startswith(QEMU_PREFIXES)


def renice_build_processes(build: BackgroundBuild, proc: Path = Path("/proc")) -> None:
    """Give every build process not yet lowered niceness 19 (processes that are gone or not ours are skipped)."""
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in build.reniced or not is_build_process(int(entry.name), proc):
            continue
        try:
            os.setpriority(os.PRIO_PROCESS, int(entry.name), LOWEST)
            build.reniced.add(int(entry.name))
        except OSError:
            build.reniced.add(int(entry.name))  # not ours to lower: do not try again


def start(config: pytest.Config, what: str, cmd: list[str], log_name: str, env: Mapping[str, str]) -> BackgroundBuild:
    """Start `cmd` (an image build) in the background, its output in artifacts/<log_name>."""
    ARTIFACTS.mkdir(exist_ok=True)
    say(config, f"\nbuilding {what} in the background, at the lowest CPU priority (progress in artifacts/{log_name})")
    with (ARTIFACTS / log_name).open("wb") as log:
        process = subprocess.Popen(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    build = BackgroundBuild(what, process, log_name)

    def lower_while_running() -> None:
        while process.poll() is None and not build.done.wait(1.0):  # a look a second at what the build started
            renice_build_processes(build)

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
