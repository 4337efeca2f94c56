"""llmpi.host.board against fixture sysfs trees (tests/board/trees.py): what is read, what is accumulated since start,
what is rendered, and what is absent where a file is."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from llmpi.core.env import sysfs_path
from llmpi.core.settings import Settings
from llmpi.host import board
from llmpi.plan import options
from tests.board import trees

pytestmark = pytest.mark.unit


def reading(sysfs: Path, proc: Path) -> board.Reading:
    return board.read(board.find_sources(sysfs), proc)


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    return trees.meminfo(tmp_path / "proc")


def test_pi4_tree(tmp_path: Path, proc: Path) -> None:
    sysfs = trees.pi4(tmp_path / "sys")
    sources = board.find_sources(sysfs)
    assert sources.throttled == sysfs / trees.PI4_THROTTLED
    assert sources.volt_alarm is None  # get_throttled has all four conditions; rpi_volt only under-voltage
    r = board.read(sources, proc)
    assert r.model == "Raspberry Pi 4 Model B Rev 1.4"
    assert r.temp_c == pytest.approx(52.582)
    assert r.thermal_type == "cpu-thermal"
    assert r.get_throttled == 0
    assert r.scaling_hz == {0: 1_800_000_000, 1: 1_800_000_000, 2: 1_800_000_000, 3: 1_800_000_000}
    assert r.mem_available == 3_000_000 * 1024
    assert board.found_line(sources, r) == (
        f"board: Raspberry Pi 4 Model B Rev 1.4, get_throttled at {sysfs / trees.PI4_THROTTLED}, "
        "thermal zone cpu-thermal"
    )


def test_pi5_tree(tmp_path: Path, proc: Path) -> None:
    sysfs = trees.pi5(tmp_path / "sys")
    r = reading(sysfs, proc)
    assert board.find_sources(sysfs).throttled == sysfs / trees.PI5_THROTTLED
    assert r.model == "Raspberry Pi 5 Model B Rev 1.0"
    assert r.temp_c == pytest.approx(61.45)
    assert r.cpu_hz == {cpu: 2_400_000_000 for cpu in range(4)}


def test_not_a_pi_has_no_pi_metrics(tmp_path: Path, proc: Path) -> None:
    (tmp_path / "sys").mkdir()
    sources = board.find_sources(tmp_path / "sys")
    r = board.read(sources, proc)
    assert r == board.Reading(mem_available=3_000_000 * 1024)
    text = board.render_prometheus(r, 0)
    assert "rpi_" not in text and "node_thermal" not in text and "llmpi_board_info" not in text
    assert "node_memory_MemAvailable_bytes 3072000000" in text
    assert "no Raspberry Pi firmware found" in board.found_line(sources, r)
    assert board.describe(board.snapshot(r, 0, 0.0))[:2] == [
        "board: not a Raspberry Pi (no device tree model)",
        "throttling: not reported on this machine (no Raspberry Pi firmware)",
    ]


def test_nothing_at_all_renders_nothing(tmp_path: Path) -> None:
    assert board.render_prometheus(board.read(board.find_sources(tmp_path), tmp_path), 0) == ""


def test_missing_and_unreadable_files_are_absent(tmp_path: Path, proc: Path) -> None:
    sysfs = trees.pi4(tmp_path / "sys")
    (sysfs / "class/thermal/thermal_zone0/type").unlink()
    (sysfs / "devices/system/cpu/cpu2/cpufreq/scaling_cur_freq").unlink()
    (sysfs / "devices/system/cpu/cpu3/cpufreq/scaling_cur_freq").write_text("garbage\n")
    throttled = sysfs / trees.PI4_THROTTLED
    sources = board.find_sources(sysfs)
    throttled.unlink()
    throttled.mkdir()  # unreadable as a file (root reads any mode, so a directory stands in for it)
    r = board.read(sources, proc)
    assert r.thermal_type is None and r.temp_c is not None
    assert set(r.scaling_hz) == {0, 1}
    assert r.get_throttled is None
    text = board.render_prometheus(r, 0)
    assert 'node_thermal_zone_temp{zone="0",type=""} 52.582' in text
    assert "rpi_throttled" not in text


def test_throttled_now_then_cleared_stays_since_start(tmp_path: Path, proc: Path) -> None:
    sysfs = trees.pi5(tmp_path / "sys")
    log = io.StringIO()
    watch = board.Watch(board.find_sources(sysfs), proc, log)
    (sysfs / trees.PI5_THROTTLED).write_text("50005\n")  # the kernel prints it without 0x
    r = watch.poll()
    assert board.names(board.now_bits(r) or 0) == ["under_voltage", "throttled"]
    assert "UNDER-VOLTAGE" in log.getvalue() and "27 W (Pi 5) / 15 W (Pi 4)" in log.getvalue()
    (sysfs / trees.PI5_THROTTLED).write_text("0\n")
    r = watch.poll()
    assert board.now_bits(r) == 0
    assert board.names(watch.since_start) == ["under_voltage", "throttled"]
    assert log.getvalue().splitlines()[-1] == "board: no throttling now (it was: under_voltage, throttled)"
    text = board.render_prometheus(r, watch.since_start)
    assert 'rpi_throttled{condition="under_voltage"} 0' in text
    assert 'rpi_throttled_since_start{condition="under_voltage"} 1' in text
    assert 'rpi_throttled_since_start{condition="throttled"} 1' in text
    assert 'rpi_throttled_since_start{condition="arm_frequency_capped"} 0' in text
    assert "rpi_get_throttled 0" in text
    watch.poll()
    assert len(log.getvalue().splitlines()) == 2  # one line a change, none a poll


def test_sticky_bits_only(tmp_path: Path, proc: Path) -> None:
    """0x80000: the soft temperature limit occurred since the kernel's last clear, and is not active now."""
    sysfs = trees.pi4(tmp_path / "sys")
    (sysfs / trees.PI4_THROTTLED).write_text("0x80000\n")
    log = io.StringIO()
    watch = board.Watch(board.find_sources(sysfs), proc, log)
    r = watch.poll()
    assert board.now_bits(r) == 0 and log.getvalue() == ""
    assert board.names(watch.since_start) == ["soft_temp_limit"]
    snap = board.snapshot(r, watch.since_start, 0.0)
    assert snap["throttled_now"] == [] and snap["throttled_since_start"] == ["soft_temp_limit"]
    assert "since start, not now: soft temp limit" in board.describe(snap)


def test_hwmon_only_board(tmp_path: Path, proc: Path) -> None:
    sysfs = trees.pi5_hwmon_only(tmp_path / "sys")
    sources = board.find_sources(sysfs)
    assert sources.throttled is None and sources.volt_alarm == sysfs / "class/hwmon/hwmon2/in0_lcrit_alarm"
    watch = board.Watch(sources, proc, io.StringIO())
    sources.volt_alarm.write_text("1\n")
    watch.poll()
    sources.volt_alarm.write_text("0\n")
    r = watch.poll()
    text = board.render_prometheus(r, watch.since_start)
    assert 'node_hwmon_in_lcrit_alarm_volts{chip="rpi_volt",sensor="in0"} 0' in text
    assert 'rpi_throttled{condition="under_voltage"} 0' in text
    assert 'rpi_throttled_since_start{condition="under_voltage"} 1' in text
    assert "arm_frequency_capped" not in text and "rpi_get_throttled" not in text
    assert "under-voltage only, from the rpi_volt hwmon" in board.found_line(sources, r)


def test_rendering_is_prometheus_text(tmp_path: Path, proc: Path) -> None:
    r = reading(trees.pi5(tmp_path / "sys"), proc)
    text = board.render_prometheus(r, 0)
    assert text.endswith("\n")
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert families == [
        "node_thermal_zone_temp",
        "node_memory_MemAvailable_bytes",
        "node_cpu_scaling_frequency_hertz",
        "node_cpu_frequency_hertz",
        "rpi_throttled",
        "rpi_throttled_since_start",
        "rpi_get_throttled",
        "llmpi_board_info",
    ]
    assert 'node_thermal_zone_temp{zone="0",type="cpu-thermal"} 61.45' in text
    assert 'node_cpu_frequency_hertz{cpu="3"} 2400000000' in text
    assert 'llmpi_board_info{model="Raspberry Pi 5 Model B Rev 1.0"} 1' in text
    for line in text.splitlines():
        assert line.startswith("# ") or len(line.rsplit(" ", 1)) == 2


def test_label_values_are_escaped() -> None:
    r = board.Reading(model='a "b"\\c')
    assert 'llmpi_board_info{model="a \\"b\\"\\\\c"} 1' in board.render_prometheus(r, 0)


def test_watch_writes_both_files(tmp_path: Path, proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(board, "POLL_SECONDS", 0.0)
    log = io.StringIO()
    watch = board.Watch(board.find_sources(trees.pi4(tmp_path / "sys")), proc, log)
    assert watch.start()
    watch.tick()
    assert log.getvalue().startswith("board: Raspberry Pi 4 Model B Rev 1.4, get_throttled at ")
    assert len(log.getvalue().splitlines()) == 1
    assert "rpi_get_throttled 0" in (tmp_path / "run/board.prom").read_text()
    snap = json.loads((tmp_path / "run/board.json").read_text())
    assert snap["model"] == "Raspberry Pi 4 Model B Rev 1.4" and snap["conditions"] == list(board.CONDITIONS)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["board.json", "board.prom"]


def test_watch_polls_only_when_due(tmp_path: Path, proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path / "run"))
    sysfs = trees.pi4(tmp_path / "sys")
    watch = board.Watch(board.find_sources(sysfs), proc, io.StringIO())
    assert watch.start() and 0 < watch.seconds_left() <= board.POLL_SECONDS
    (sysfs / trees.PI4_THROTTLED).write_text("50005\n")
    watch.tick()  # not due yet: the files still say what the first poll saw
    assert "rpi_get_throttled 0" in (tmp_path / "run/board.prom").read_text()
    watch.next_at = 0.0
    watch.tick()
    assert "rpi_get_throttled 327685" in (tmp_path / "run/board.prom").read_text()


def test_nothing_to_watch_writes_nothing(tmp_path: Path, proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run/board.prom").write_text("stale\n")  # from a watch before, on another tree
    log = io.StringIO()
    sources = board.find_sources(tmp_path / "empty")
    assert not sources.watched
    assert not board.Watch(sources, proc, log).start()
    assert log.getvalue().splitlines()[-1] == "board: nothing to watch on this machine"
    assert list((tmp_path / "run").iterdir()) == []
    assert board.start_watch({"LLMPI_SYSFS_PATH": str(tmp_path / "empty")}, log) is None


def test_the_listener_polls_the_board_between_events(
    tmp_path: Path, proc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """supervisord's event listener hosts the watch: it polls while no event comes, and still answers events."""
    import os
    import threading
    import time

    from llmpi.process import fatal_listener

    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(board, "POLL_SECONDS", 0.05)
    sysfs = trees.pi5(tmp_path / "sys")
    watch = board.start_watch({"LLMPI_SYSFS_PATH": str(sysfs)}, io.StringIO())
    assert watch is not None
    polls: list[float] = []
    polled = threading.Condition()
    real_poll = watch.poll

    def counted_poll() -> board.Reading:
        with polled:
            polls.append(time.monotonic())
            polled.notify_all()
        return real_poll()

    monkeypatch.setattr(watch, "poll", counted_poll)
    r, w = os.pipe()
    payload = "processname:llama-server groupname:llama-server from_state:STARTING\n"
    event = f"ver:3.0 eventname:PROCESS_STATE_STARTING len:{len(payload)}\n{payload}"
    out = io.StringIO()
    seen: dict[str, int] = {}

    def supervisord() -> None:
        """One event once the listener has polled 3 times; the end of the events (EOF) once it answered the event
        and polled 3 times more. Each wait is re-checked at every poll, and bounded."""
        try:
            with polled:
                if polled.wait_for(lambda: len(polls) >= 3, timeout=10):
                    seen["before the event"] = len(polls)
            os.write(w, event.encode())
            with polled:
                if polled.wait_for(lambda: "RESULT 2\nOK" in out.getvalue(), timeout=10):
                    seen["answered"] = answered = len(polls)
                    polled.wait_for(lambda: len(polls) >= answered + 3, timeout=10)
        finally:
            os.close(w)

    sender = threading.Thread(target=supervisord)
    sender.start()
    with os.fdopen(r) as stdin:
        assert fatal_listener.main(stdin, out, io.StringIO(), watch) == 0
    sender.join(10)
    assert out.getvalue() == "READY\nRESULT 2\nOKREADY\n"  # the event was answered
    assert seen.get("before the event", 0) >= 3, (seen, len(polls))  # it polled while no event came
    assert "answered" in seen and len(polls) >= seen["answered"] + 3, (seen, len(polls))  # and after one
    assert "llmpi_board_info" in board.prom_path().read_text()


def test_describe_under_voltage_now(tmp_path: Path, proc: Path) -> None:
    sysfs = trees.pi4(tmp_path / "sys")
    (sysfs / trees.PI4_THROTTLED).write_text("50005\n")
    lines = board.describe(board.read_once(sysfs, proc))
    assert lines[:2] == ["board: Raspberry Pi 4 Model B Rev 1.4", "temperature: 52.6 °C (cpu-thermal)"]
    assert lines[2].startswith("UNDER-VOLTAGE: the power supply cannot keep up; use the official 27 W (Pi 5)")
    assert lines[3].startswith("THROTTLED:")
    assert "clock (asked for, scaling_cur_freq; hides firmware throttling): cpu0 1800 MHz" in lines[-2]
    assert lines[-1] == "memory available: 2.86 GiB"


def test_launcher_points_metrics_textfile_at_the_watch_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path))
    opts = options.server_options(Settings.read({}), router=False)
    assert ("LLAMA_ARG_METRICS_TEXTFILE", "--metrics-textfile", str(board.prom_path())) in opts
    off = options.server_options(Settings.read({"LLMPI_METRICS": "off"}), router=False)
    assert not [o for o in off if o[0] == "LLAMA_ARG_METRICS_TEXTFILE"]


def test_status_reads_the_watch_file_else_the_board(
    tmp_path: Path, proc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmpi.cli import main as cli

    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path / "run"))
    sysfs = trees.pi5(tmp_path / "sys")
    s = Settings.read({"LLMPI_SYSFS_PATH": str(sysfs), "LLMPI_PORT": "1"})
    assert cli.board_snapshot(s)["model"] == "Raspberry Pi 5 Model B Rev 1.0"  # no watch file: read now
    watch = board.Watch(board.find_sources(sysfs), proc, io.StringIO())
    (sysfs / trees.PI5_THROTTLED).write_text("80008\n")
    watch.write(watch.poll())
    out = cli.status(s)
    assert out.splitlines()[0].startswith("server: not answering on port 1")
    assert "SOFT TEMPERATURE LIMIT: the SoC is hot; add cooling (a heatsink and fan) (now)" in out


def test_the_sysfs_setting_is_one_reading() -> None:
    assert sysfs_path({}) == Path("/sys") == Settings.read({}).sysfs
    assert sysfs_path({"LLMPI_SYSFS_PATH": "/host/sys"}) == Settings.read({"LLMPI_SYSFS_PATH": "/host/sys"}).sysfs
