"""tests/background.py: an image build in the background, its compiler processes lowered to niceness 19."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import background
from tests.compose_helpers import ARTIFACTS

pytestmark = pytest.mark.unit


def fake_process(proc: Path, pid: int, comm: str, argv0: bytes) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "comm").write_text(comm + "\n")
    (proc / str(pid) / "cmdline").write_bytes(argv0 + b"\0-c\0x\0")


def test_a_build_process_is_a_compiler_s_or_arm64_code_under_qemu(tmp_path: Path) -> None:
    fake_process(tmp_path, 10, "cc1plus", b"/usr/libexec/gcc-cross/aarch64-linux-gnu/14/cc1plus")
    fake_process(tmp_path, 11, "python3.13", b"/usr/libexec/qemu-binfmt/aarch64-binfmt-P")
    fake_process(tmp_path, 12, "python3.13", b"/usr/bin/python3.13")  # the appliance's own processes
    fake_process(tmp_path, 13, "llama-server", b"/opt/llama/bin/llama-server")
    assert [pid for pid in (10, 11, 12, 13, 14) if background.is_build_process(pid, tmp_path)] == [10, 11]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_the_build_s_processes_get_the_lowest_priority_and_others_keep_theirs(tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    ninja = tmp_path / "ninja"  # a process that looks like a build's to /proc (its comm)
    shutil.copy(sleep, ninja)
    builder = subprocess.Popen([str(ninja), "30"])
    bystander = subprocess.Popen([sleep, "30"])
    holder = subprocess.Popen(["sleep", "30"])  # what background.start would watch
    build = background.BackgroundBuild("test", holder, "unused.log")
    try:
        background.renice_build_processes(build)
        assert os.getpriority(os.PRIO_PROCESS, builder.pid) == background.LOWEST
        assert os.getpriority(os.PRIO_PROCESS, bystander.pid) == os.getpriority(os.PRIO_PROCESS, 0)
        assert builder.pid in build.reniced and bystander.pid not in build.reniced
    finally:
        for p in (builder, bystander, holder):
            p.kill()
            p.wait()


def test_a_finished_build_is_waited_for_and_a_failed_one_fails_with_its_log(pytestconfig: pytest.Config) -> None:
    ok = background.start(pytestconfig, "an image", ["sh", "-c", "echo built"], "test-background-ok.log", os.environ)
    background.finish(pytestconfig, ok)
    assert (ARTIFACTS / "test-background-ok.log").read_text() == "built\n"
    cmd = ["sh", "-c", "echo no space left; exit 3"]
    bad = background.start(pytestconfig, "another image", cmd, "test-background-bad.log", os.environ)
    with pytest.raises(AssertionError, match=r"(?s)building another image failed \(exit 3\).*no space left"):
        background.finish(pytestconfig, bad)


def test_a_build_nobody_waited_for_is_stopped(pytestconfig: pytest.Config) -> None:
    build = background.start(pytestconfig, "an image", ["sleep", "60"], "test-background-stop.log", os.environ)
    background.stop(build)
    assert build.process.returncode is not None and build.done.is_set()
