"""The board's health: SoC temperature, the firmware's throttling flags, CPU clocks and available memory.

Read from a sysfs root (`Settings.sysfs`, LLMPI_SYSFS_PATH; /sys by default, a fixture tree in the tests, like
node_exporter's --path.sysfs) and from /proc/meminfo. A file that is missing or cannot be read is absent from the
result, never an error: on a machine that is not a Raspberry Pi (no get_throttled, no rpi_volt hwmon, no device tree
model) the Pi's values are simply absent.

The watch (`Watch`, run by the FATAL listener between supervisord's events: llmpi.process.fatal_listener) polls once a
second, keeps the throttling conditions seen since it started (the firmware's "has occurred" bits are cleared by the
kernel's own 2 s poll, so a reader that only looks at them misses most of them), and replaces two files in the
runtime directory whole at each poll: board.prom (Prometheus text, appended to llama-server's /metrics by
--metrics-textfile) and board.json (read by `llmpi status`). It logs one line at start saying what it found and one
line whenever the throttling conditions change. Paths, sources and metric names: docs/board.md.

It imports the standard library and the settings' low-level helpers only: it lives in a process that lasts as long
as the container (docs/board.md: its memory).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, TextIO

from ..core import paths
from ..core.env import sysfs_path
from ..core.files import write_atomic

POLL_SECONDS = 1.0
# the firmware's get_throttled word: bit N is a condition now, bit N + 16 "has occurred" since the firmware last
# cleared it (the kernel's rpi_volt hwmon driver asks it to clear them every 2 s)
CONDITIONS = ("under_voltage", "arm_frequency_capped", "throttled", "soft_temp_limit")
STICKY_SHIFT = 16
NOW_MASK = (1 << len(CONDITIONS)) - 1
# where the Raspberry Pi kernel puts get_throttled: on the firmware's platform device, one or two levels below
# devices/platform (Pi 4: soc/soc:firmware, Pi 5: soc@107c000000/soc@107c000000:firmware); docs/board.md
THROTTLED_GLOBS = ("devices/platform/*/get_throttled", "devices/platform/*/*/get_throttled")
ADVICE = {
    "under_voltage": "UNDER-VOLTAGE: the power supply cannot keep up; use the official 27 W (Pi 5) / 15 W (Pi 4) "
    "USB-C supply",
    "arm_frequency_capped": "ARM FREQUENCY CAPPED: the firmware holds the CPU below its full clock",
    "throttled": "THROTTLED: the firmware has lowered the CPU clock, so replies are slower",
    "soft_temp_limit": "SOFT TEMPERATURE LIMIT: the SoC is hot; add cooling (a heatsink and fan)",
}
NO_CLOCKS: Mapping[int, int] = MappingProxyType({})


class Sources(NamedTuple):
    """What the board offers, found once at start (the hardware does not change while the container runs)."""

    sysfs: Path
    throttled: Path | None  # the firmware's get_throttled file
    volt_alarm: Path | None  # the rpi_volt hwmon's in0_lcrit_alarm, where get_throttled is absent
    thermal: Path | None  # thermal_zone0's directory

    @property
    def watched(self) -> bool:
        """Whether there is anything to watch: a temperature or the Pi's throttling flags."""
        return any((self.throttled, self.volt_alarm, self.thermal))


class Reading(NamedTuple):
    """One poll. None (or an empty mapping) = that file is absent or unreadable here."""

    model: str | None = None
    temp_c: float | None = None
    thermal_type: str | None = None
    get_throttled: int | None = None
    volt_alarm: bool | None = None
    cpu_hz: Mapping[int, int] = NO_CLOCKS  # cpuinfo_cur_freq: the real clock (root only)
    scaling_hz: Mapping[int, int] = NO_CLOCKS  # scaling_cur_freq: what the governor asked for
    mem_available: int | None = None


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except (OSError, ValueError):
        return None


def read_int(path: Path, base: int = 10) -> int | None:
    text = read_text(path)
    try:
        return int(text, base) if text else None
    except ValueError:
        return None


def find_throttled(sysfs: Path) -> Path | None:
    """The first get_throttled under devices/platform, at most two levels down (a bounded glob)."""
    for pattern in THROTTLED_GLOBS:
        found = sorted(p for p in sysfs.glob(pattern) if p.is_file())
        if found:
            return found[0]
    return None


def find_volt_alarm(sysfs: Path) -> Path | None:
    """The rpi_volt hwmon's under-voltage alarm (the kernel's own reading of the firmware's bit 16)."""
    for hwmon in sorted(sysfs.glob("class/hwmon/hwmon*")):
        alarm = hwmon / "in0_lcrit_alarm"
        if read_text(hwmon / "name") == "rpi_volt" and alarm.is_file():
            return alarm
    return None


def find_sources(sysfs: Path) -> Sources:
    thermal = sysfs / "class/thermal/thermal_zone0"
    throttled = find_throttled(sysfs)
    return Sources(
        sysfs=sysfs,
        throttled=throttled,
        volt_alarm=None if throttled else find_volt_alarm(sysfs),
        thermal=thermal if (thermal / "temp").is_file() else None,
    )


def board_model(sysfs: Path) -> str | None:
    """The device tree's model string (NUL-terminated), e.g. "Raspberry Pi 5 Model B Rev 1.0"."""
    text = read_text(sysfs / "firmware/devicetree/base/model")
    return text.rstrip("\x00").strip() or None if text else None


def cpu_clocks(sysfs: Path, name: str) -> dict[int, int]:
    """Each CPU's cpufreq file `name` (kHz), in Hz, for the CPUs where it can be read."""
    clocks = {}
    for cpufreq in sysfs.glob("devices/system/cpu/cpu[0-9]*/cpufreq"):
        khz = read_int(cpufreq / name)
        cpu = cpufreq.parent.name.removeprefix("cpu")
        if khz is not None and cpu.isdigit():
            clocks[int(cpu)] = khz * 1000
    return dict(sorted(clocks.items()))


def mem_available(proc: Path) -> int | None:
    """/proc/meminfo's MemAvailable, in bytes."""
    for line in (read_text(proc / "meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else None
    return None


def read(sources: Sources, proc: Path = Path("/proc")) -> Reading:
    temp = read_int(sources.thermal / "temp") if sources.thermal else None
    alarm = read_int(sources.volt_alarm) if sources.volt_alarm else None
    return Reading(
        model=board_model(sources.sysfs),
        temp_c=temp / 1000 if temp is not None else None,
        thermal_type=read_text(sources.thermal / "type") if sources.thermal else None,
        get_throttled=read_int(sources.throttled, 16) if sources.throttled else None,
        volt_alarm=bool(alarm) if alarm is not None else None,
        cpu_hz=cpu_clocks(sources.sysfs, "cpuinfo_cur_freq"),
        scaling_hz=cpu_clocks(sources.sysfs, "scaling_cur_freq"),
        mem_available=mem_available(proc),
    )


def now_bits(r: Reading) -> int | None:
    """The conditions active now (bits 0-3), from get_throttled, else the rpi_volt alarm (under-voltage only)."""
    if r.get_throttled is not None:
        return r.get_throttled & NOW_MASK
    if r.volt_alarm is not None:
        return int(r.volt_alarm)
    return None


def seen_bits(r: Reading) -> int:
    """The conditions this reading shows as active now or as occurred since the firmware's last clear."""
    if r.get_throttled is not None:
        return (r.get_throttled | r.get_throttled >> STICKY_SHIFT) & NOW_MASK
    return now_bits(r) or 0


def known_conditions(r: Reading) -> tuple[str, ...]:
    """The conditions this board reports: all four with get_throttled, under-voltage alone with rpi_volt."""
    if r.get_throttled is not None:
        return CONDITIONS
    return CONDITIONS[:1] if r.volt_alarm is not None else ()


def names(bits: int, known: Sequence[str] = CONDITIONS) -> list[str]:
    return [c for i, c in enumerate(CONDITIONS) if bits >> i & 1 and c in known]


def snapshot(r: Reading, since_start: int, at: float) -> dict[str, Any]:
    """What board.json holds, and what `llmpi status` prints from."""
    known = known_conditions(r)
    now = now_bits(r)
    return {
        "time": at,
        **r._asdict(),
        "cpu_hz": {str(k): v for k, v in r.cpu_hz.items()},
        "scaling_hz": {str(k): v for k, v in r.scaling_hz.items()},
        "conditions": list(known),
        "throttled_now": names(now, known) if now is not None else [],
        "throttled_since_start": names(since_start, known),
    }


# --- Prometheus text format 0.0.4 ---------------------------------------------------------------------------------


def label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float) -> str:
    """A sample's value: integers in full (a byte count, a clock in Hz), other numbers as Python writes them."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    """One metric family: # HELP, # TYPE and its samples (label text, value); nothing at all without samples."""
    lines = [f"{name}{labels} {number(value)}" for labels, value in samples]
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines] if lines else []


def conditions_samples(bits: int, known: Sequence[str]) -> list[tuple[str, float]]:
    return [(f'{{condition="{c}"}}', bits >> CONDITIONS.index(c) & 1) for c in known]


def render_prometheus(r: Reading, since_start: int) -> str:
    known = known_conditions(r)
    now = now_bits(r)
    lines: list[str] = []
    if r.temp_c is not None:
        zone = f'{{zone="0",type="{label_value(r.thermal_type or "")}"}}'
        lines += metric("node_thermal_zone_temp", "gauge", "Zone temperature in Celsius", [(zone, r.temp_c)])
    if r.mem_available is not None:
        lines += metric(
            "node_memory_MemAvailable_bytes", "gauge", "Memory information field MemAvailable_bytes.",
            [("", r.mem_available)],
        )  # fmt: skip
    lines += metric(
        "node_cpu_scaling_frequency_hertz", "gauge", "Current scaled CPU thread frequency in hertz "
        "(what the governor asked for; firmware throttling does not show here).",
        [(f'{{cpu="{cpu}"}}', hz) for cpu, hz in r.scaling_hz.items()],
    )  # fmt: skip
    lines += metric(
        "node_cpu_frequency_hertz", "gauge",
        "Current CPU thread frequency in hertz (cpuinfo_cur_freq, the real clock).",
        [(f'{{cpu="{cpu}"}}', hz) for cpu, hz in r.cpu_hz.items()],
    )  # fmt: skip
    if r.volt_alarm is not None:
        lines += metric(
            "node_hwmon_in_lcrit_alarm_volts", "gauge", "Hardware monitor for voltage (lcrit_alarm): 0 or 1.",
            [('{chip="rpi_volt",sensor="in0"}', int(r.volt_alarm))],
        )  # fmt: skip
    if now is not None:
        lines += metric(
            "rpi_throttled", "gauge", "A throttling condition active now (1) or not (0), from the firmware.",
            conditions_samples(now, known),
        )  # fmt: skip
        lines += metric(
            "rpi_throttled_since_start", "gauge",
            "A throttling condition seen (1) or not (0) since llmpi's board watch started.",
            conditions_samples(since_start, known),
        )  # fmt: skip
    if r.get_throttled is not None:
        lines += metric(
            "rpi_get_throttled", "gauge", "The firmware's get_throttled word, as read.", [("", r.get_throttled)]
        )
    if r.model is not None:
        lines += metric(
            "llmpi_board_info", "gauge", "The board's model, from the device tree.",
            [(f'{{model="{label_value(r.model)}"}}', 1)],
        )  # fmt: skip
    return "\n".join(lines) + "\n" if lines else ""


# --- words, for the log and `llmpi status` ------------------------------------------------------------------------


def found_line(sources: Sources, r: Reading) -> str:
    """The watch's first log line: what it found on this machine."""
    if sources.throttled:
        where = f"get_throttled at {sources.throttled}"
    elif sources.volt_alarm:
        where = f"no get_throttled; under-voltage only, from the rpi_volt hwmon ({sources.volt_alarm})"
    else:
        where = "no Raspberry Pi firmware found, so throttling is not reported"
    temp = f"thermal zone {r.thermal_type or '0'}" if r.temp_c is not None else "no temperature (no thermal_zone0)"
    return f"board: {r.model or 'no device tree model'}, {where}, {temp}"


def change_line(before: int, after: int, known: Sequence[str]) -> str:
    """The log line when the conditions active now change."""
    if not after:
        return f"board: no throttling now (it was: {', '.join(names(before, known))})"
    return "board: " + "; ".join(f"{ADVICE[c]} (now)" for c in names(after, known))


def describe(snap: Mapping[str, Any]) -> list[str]:
    """`llmpi status`'s lines about the board, from a snapshot."""
    lines = [f"board: {snap.get('model') or 'not a Raspberry Pi (no device tree model)'}"]
    if snap.get("temp_c") is not None:
        lines.append(f"temperature: {snap['temp_c']:.1f} °C ({snap.get('thermal_type') or 'thermal zone 0'})")
    if not snap.get("conditions"):
        lines.append("throttling: not reported on this machine (no Raspberry Pi firmware)")
    elif snap.get("throttled_now"):
        lines += [f"{ADVICE[c]} (now)" for c in snap["throttled_now"]]
    else:
        lines.append("throttling: none now")
    earlier = [c for c in snap.get("throttled_since_start", []) if c not in snap.get("throttled_now", [])]
    if earlier:
        lines.append("since start, not now: " + ", ".join(c.replace("_", " ") for c in earlier))
    lines += clock_lines(snap)
    if snap.get("mem_available") is not None:
        lines.append(f"memory available: {snap['mem_available'] / 2**30:.2f} GiB")
    return lines


def clock_lines(snap: Mapping[str, Any]) -> list[str]:
    def mhz(clocks: Mapping[str, int]) -> str:
        return ", ".join(f"cpu{cpu} {hz / 1e6:.0f} MHz" for cpu, hz in clocks.items())

    lines = []
    if snap.get("cpu_hz"):
        lines.append(f"clock (real, cpuinfo_cur_freq): {mhz(snap['cpu_hz'])}")
    if snap.get("scaling_hz"):
        lines.append(f"clock (asked for, scaling_cur_freq; hides firmware throttling): {mhz(snap['scaling_hz'])}")
    return lines


# --- the watch ----------------------------------------------------------------------------------------------------


def prom_path() -> Path:
    """board.prom in the runtime directory; llmpi.plan.options.server_options names it for --metrics-textfile."""
    return Path(paths.runtime_file(paths.BOARD_PROM))


def json_path() -> Path:
    return Path(paths.runtime_file(paths.BOARD_JSON))


class Watch:
    """The polling loop's state: the sources found at start, the conditions seen since, the last ones active now."""

    def __init__(self, sources: Sources, proc: Path, log: TextIO) -> None:
        self.sources, self.proc, self.log = sources, proc, log
        self.since_start = 0
        self.now: int | None = None
        self.write_failed = False
        self.next_at = 0.0  # time.monotonic() of the next poll

    def poll(self) -> Reading:
        r = read(self.sources, self.proc)
        self.since_start |= seen_bits(r)
        now = now_bits(r) or 0
        if now != (self.now or 0):
            print(change_line(self.now or 0, now, known_conditions(r)), file=self.log, flush=True)
        self.now = now
        return r

    def write(self, r: Reading) -> None:
        """Both files, replaced whole; a failure (the runtime directory full or gone) is logged once, then retried
        quietly at each poll."""
        try:
            write_atomic(prom_path(), render_prometheus(r, self.since_start))
            write_atomic(json_path(), json.dumps(snapshot(r, self.since_start, time.time())) + "\n")
            self.write_failed = False
        except OSError as e:
            if not self.write_failed:
                print(f"board: cannot write {prom_path().parent}: {e}", file=self.log, flush=True)
            self.write_failed = True

    def start(self) -> bool:
        """The first poll and the line saying what was found. With nothing to watch (no temperature, not a Pi) the
        watch writes nothing, says so, and returns False: the listener then waits for its events alone."""
        first = self.poll()
        print(found_line(self.sources, first), file=self.log, flush=True)
        if not self.sources.watched:
            for path in (prom_path(), json_path()):
                path.unlink(missing_ok=True)
            print("board: nothing to watch on this machine", file=self.log, flush=True)
            return False
        self.write(first)
        self.next_at = time.monotonic() + POLL_SECONDS
        return True

    def seconds_left(self) -> float:
        """Until the next poll is due (0 when it is)."""
        return max(0.0, self.next_at - time.monotonic())

    def tick(self) -> None:
        """Poll and write when a poll is due (once every POLL_SECONDS), else nothing."""
        if self.seconds_left() > 0:
            return
        self.write(self.poll())
        self.next_at = max(self.next_at + POLL_SECONDS, time.monotonic())


def read_once(sysfs: Path, proc: Path = Path("/proc")) -> dict[str, Any]:
    """One reading as a snapshot, for `llmpi status` when the watch has written nothing."""
    r = read(find_sources(sysfs), proc)
    return snapshot(r, seen_bits(r), time.time())


def start_watch(env: Mapping[str, str], log: TextIO) -> Watch | None:
    """The watch of this machine's board, its first poll done; None when there is nothing to watch."""
    watch = Watch(find_sources(sysfs_path(env)), Path("/proc"), log)
    return watch if watch.start() else None
