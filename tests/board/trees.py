"""Fixture sysfs trees of a Raspberry Pi 4 and a Pi 5, as their kernels lay them out (docs/board.md has the
sources), for llmpi.host.board's unit tests and for mounting into the real container as LLMPI_SYSFS_PATH."""

from __future__ import annotations

from pathlib import Path

PI4_THROTTLED = "devices/platform/soc/soc:firmware/get_throttled"
PI5_THROTTLED = "devices/platform/soc@107c000000/soc@107c000000:firmware/get_throttled"


def put(root: Path, rel: str, text: str, mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def cpus(root: Path, khz: int, real_clock_mode: int) -> None:
    """Four cores; cpuinfo_cur_freq is 0400 root on a real kernel (unreadable for llmpi's user)."""
    for cpu in range(4):
        put(root, f"devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq", f"{khz}\n")
        put(root, f"devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_cur_freq", f"{khz}\n", real_clock_mode)


def pi(root: Path, model: str, millidegrees: int, throttled: str, hwmons: list[str], khz: int, real_clock: int) -> Path:
    """A Pi's tree: its model, temperature and get_throttled (nothing throttled), its hwmon chips in order (the
    rpi_volt one with its alarm clear), and four cores at `khz` (the real clock file with mode `real_clock`)."""
    put(root, "firmware/devicetree/base/model", f"{model}\x00")
    put(root, "class/thermal/thermal_zone0/temp", f"{millidegrees}\n")
    put(root, "class/thermal/thermal_zone0/type", "cpu-thermal\n")
    put(root, throttled, "0\n")
    for i, name in enumerate(hwmons):
        put(root, f"class/hwmon/hwmon{i}/name", f"{name}\n")
        if name == "rpi_volt":
            put(root, f"class/hwmon/hwmon{i}/in0_lcrit_alarm", "0\n")
    cpus(root, khz, real_clock)
    return root


def pi4(root: Path) -> Path:
    """A Pi 4 at 52.6 °C, nothing throttled; the real clock readable only by its owner."""
    return pi(
        root, "Raspberry Pi 4 Model B Rev 1.4", 52582, PI4_THROTTLED, ["cpu_thermal", "rpi_volt"], 1_800_000, 0o400
    )


def pi5(root: Path) -> Path:
    """A Pi 5 at 61.4 °C, nothing throttled, every file readable."""
    hwmons = ["cpu_thermal", "rp1_adc", "rpi_volt"]
    return pi(root, "Raspberry Pi 5 Model B Rev 1.0", 61450, PI5_THROTTLED, hwmons, 2_400_000, 0o444)


def pi5_hwmon_only(root: Path) -> Path:
    """A Pi 5 whose kernel has no get_throttled file: under-voltage only from the rpi_volt hwmon."""
    pi5(root)
    (root / PI5_THROTTLED).unlink()
    return root


def meminfo(proc: Path, available_kib: int = 3_000_000) -> Path:
    put(proc, "meminfo", f"MemTotal:        8000000 kB\nMemFree:   100 kB\nMemAvailable:    {available_kib} kB\n")
    return proc
