"""Board health in the real container: fixture sysfs trees of a Pi 4 and a Pi 5 (tests/board/trees.py), and an empty
one (not a Pi), mounted read-only, with LLMPI_SYSFS_PATH pointing at them. /metrics (with the key) carries the
board's metrics next to llama.cpp's; throttling set on the host shows now, then since start; `llmpi status` says it
in words; the chat page shows the temperature and the warning in Chromium.

One container for the whole module: /boards/current is a link to one tree, and switching it restarts the board
watch (supervisord starts it again), as a container start would.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.board import trees
from tests.compose_helpers import COMPOSE_FILE, ROOT, Project, wait_for

pytestmark = pytest.mark.board

OVERRIDE = ROOT / "tests" / "appliance" / "compose.board.yaml"
# stops the board watch (hosted by the FATAL listener's process) from inside the container, with Python alone (not
# relying on ps or kill in the image); supervisord starts the listener again, whose watch reads the tree anew
STOP_WATCH = (
    "import os, signal\n"
    "for p in os.listdir('/proc'):\n"
    "    try: cmd = open(f'/proc/{p}/cmdline', 'rb').read() if p.isdigit() else b''\n"
    "    except OSError: continue\n"
    "    if b'-m\\x00llmpi.process.fatal_listener' in cmd: os.kill(int(p), signal.SIGTERM); print(p)\n"
)


class Board:
    """The module's container and the fixture trees it reads."""

    def __init__(self, project: Project, trees_dir: Path, key: str) -> None:
        self.project, self.trees, self.key = project, trees_dir, key

    def metrics(self) -> str:
        r = requests.get(f"{self.project.url}/metrics", headers={"Authorization": f"Bearer {self.key}"}, timeout=10)
        assert r.status_code == 200, r.text
        return r.text

    def wait_metrics(self, *lines: str, absent: tuple[str, ...] = ()) -> str:
        seen = {"text": ""}

        def ok() -> bool:
            seen["text"] = self.metrics()
            return all(line in seen["text"] for line in lines) and not any(a in seen["text"] for a in absent)

        try:
            wait_for(ok, 20, pause=0.5, what=f"/metrics with {lines}, without {absent}")
        except TimeoutError:
            raise AssertionError(seen["text"]) from None
        return seen["text"]

    def use(self, name: str) -> None:
        """Point /boards/current at another tree and restart the watch, which reads LLMPI_SYSFS_PATH at start."""
        link = self.trees / "current.new"
        link.symlink_to(name)
        os.replace(link, self.trees / "current")
        code, pids = self.project.exec(["python3", "-c", STOP_WATCH])
        assert code == 0 and pids.split(), pids

    def set_throttled(self, name: str, value: str) -> None:
        rel = trees.PI5_THROTTLED if name == "pi5" else trees.PI4_THROTTLED
        (self.trees / name / rel).write_text(value + "\n")


@pytest.fixture(scope="module")
def board(appliance_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    trees_dir = tmp_path_factory.mktemp("boards")
    trees_dir.chmod(0o755)  # the container's user reads it
    trees.pi4(trees_dir / "pi4")
    trees.pi5(trees_dir / "pi5")
    (trees_dir / "empty").mkdir()
    (trees_dir / "current").symlink_to("pi5")
    project = Project(
        f"llmpi-test-board-{os.getpid()}",
        env={"LLMPI_SYSFS_PATH": "/boards/current", "LLMPI_TEST_BOARDS": str(trees_dir)},
        files=[COMPOSE_FILE, OVERRIDE],
    )
    project.up()
    try:
        project.wait_healthy()
        yield Board(project, trees_dir, project.stored_key())
    finally:
        project.down()


@pytest.mark.contract
def test_pi5_throttling_now_then_since_start(board: Board) -> None:
    board.use("pi5")
    assert requests.get(f"{board.project.url}/metrics", timeout=10).status_code == 401
    text = board.wait_metrics(
        'node_thermal_zone_temp{zone="0",type="cpu-thermal"} 61.45',
        'node_cpu_frequency_hertz{cpu="0"} 2400000000',
        'node_cpu_scaling_frequency_hertz{cpu="3"} 2400000000',
        'llmpi_board_info{model="Raspberry Pi 5 Model B Rev 1.0"} 1',
        'rpi_throttled{condition="under_voltage"} 0',
        "rpi_get_throttled 0",
    )
    assert "llamacpp:prompt_tokens_total" in text  # one scrape: llama.cpp's metrics and the board's
    # the page's question: the board alone, llama.cpp's metrics (and their scrape-to-scrape gauges) left alone
    url = f"{board.project.url}/metrics?only=textfile"
    assert requests.get(url, timeout=10).status_code == 401
    alone = requests.get(url, headers={"Authorization": f"Bearer {board.key}"}, timeout=10).text
    assert 'llmpi_board_info{model="Raspberry Pi 5 Model B Rev 1.0"} 1' in alone and "llamacpp:" not in alone
    assert re.search(r"^node_memory_MemAvailable_bytes \d", text, re.M)
    board.set_throttled("pi5", "0x50005")
    board.wait_metrics(
        'rpi_throttled{condition="under_voltage"} 1',
        'rpi_throttled{condition="throttled"} 1',
        'rpi_throttled{condition="arm_frequency_capped"} 0',
        "rpi_get_throttled 327685",
    )
    board.set_throttled("pi5", "0x0")
    board.wait_metrics(
        'rpi_throttled{condition="under_voltage"} 0',
        'rpi_throttled_since_start{condition="under_voltage"} 1',
        'rpi_throttled_since_start{condition="throttled"} 1',
        'rpi_throttled_since_start{condition="soft_temp_limit"} 0',
    )
    logs = board.project.logs()
    assert (
        "board: Raspberry Pi 5 Model B Rev 1.0, get_throttled at /boards/current/devices/platform/soc@107c000000"
        in logs
    )
    assert "board: UNDER-VOLTAGE: the power supply cannot keep up" in logs
    assert "board: no throttling now (it was: under_voltage, throttled)" in logs


def test_pi4_and_llmpi_status(board: Board) -> None:
    board.use("pi4")
    board.set_throttled("pi4", "0x80000")  # the soft temperature limit occurred; not active now
    text = board.wait_metrics(
        'llmpi_board_info{model="Raspberry Pi 4 Model B Rev 1.4"} 1',
        'node_thermal_zone_temp{zone="0",type="cpu-thermal"} 52.582',
        'node_cpu_scaling_frequency_hertz{cpu="0"} 1800000000',
        'rpi_throttled_since_start{condition="soft_temp_limit"} 1',
    )
    assert "node_cpu_frequency_hertz" not in text  # cpuinfo_cur_freq is 0400 root, as on a real kernel
    code, out = board.project.exec(["llmpi", "status"])
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("server: serving on port 8080"), out
    assert lines[1:4] == [
        "board: Raspberry Pi 4 Model B Rev 1.4",
        "temperature: 52.6 °C (cpu-thermal)",
        "throttling: none now",
    ], out
    assert "since start, not now: soft temp limit" in out
    assert "clock (asked for, scaling_cur_freq; hides firmware throttling): cpu0 1800 MHz" in out
    assert "memory available: " in out
    board.set_throttled("pi4", "0x0")


def test_the_page_warns_while_throttled(board: Board, browser: webdriver.Chrome) -> None:
    browser.get("about:blank")
    browser.get_log("browser")  # type: ignore[no-untyped-call, unused-ignore]  # drop what earlier tests' pages logged
    board.use("pi5")
    board.set_throttled("pi5", "0x50005")
    board.wait_metrics('rpi_throttled{condition="under_voltage"} 1')
    browser.get(f"{board.project.url}/")
    browser.execute_script("localStorage.clear(); localStorage.setItem('llmpi.apiKey', arguments[0]);", board.key)
    browser.get(f"{board.project.url}/")
    warning = browser.find_element(By.ID, "board-warning")
    wait_for(warning.is_displayed, 30, what="the page's throttling warning")
    assert warning.text == "⚠ UNDER VOLTAGE, THROTTLED"
    assert browser.find_element(By.ID, "board-temp").text == "61 °C"
    board.set_throttled("pi5", "0x0")
    board.wait_metrics('rpi_throttled{condition="under_voltage"} 0')
    browser.refresh()
    note = browser.find_element(By.ID, "board-note")
    wait_for(note.is_displayed, 30, what="the page's since-start note")
    assert note.text == "since start: under voltage, throttled"
    assert not browser.find_element(By.ID, "board-warning").is_displayed()
    logs = browser.get_log("browser")  # type: ignore[no-untyped-call, unused-ignore]
    severe = [e for e in logs if e.get("level") == "SEVERE"]
    assert not severe, severe


def test_not_a_pi_has_no_board_metrics_and_no_errors(board: Board) -> None:
    board.use("empty")
    text = board.wait_metrics("llamacpp:prompt_tokens_total", absent=("llmpi_board_info", "node_memory_"))
    for name in ("rpi_", "node_thermal_zone_temp", "node_hwmon_", "node_cpu_"):
        assert name not in text, text
    logs = board.project.logs()
    assert (
        "board: no device tree model, no Raspberry Pi firmware found, so throttling is not reported, "
        "no temperature (no thermal_zone0)"
    ) in logs
    assert "board: nothing to watch on this machine" in logs
    code, out = board.project.exec(["ls", "/tmp/llmpi"])
    assert code == 0 and "board.prom" not in out and "board.json" not in out, out
    assert "Traceback" not in logs and "board: cannot" not in logs
    code, out = board.project.exec(["llmpi", "status"])
    assert code == 0 and "throttling: not reported on this machine (no Raspberry Pi firmware)" in out, out


def _pi5_project(project: Project, trees_dir: Path, **env: str) -> str:
    """`project` on a Pi 5 tree that reports under-voltage now; returns its key."""
    trees_dir.mkdir(mode=0o755)
    trees.pi5(trees_dir / "pi5")
    (trees_dir / "pi5" / trees.PI5_THROTTLED).write_text("50005\n")
    project.files = [COMPOSE_FILE, OVERRIDE]
    project.env.update(LLMPI_SYSFS_PATH="/boards/pi5", LLMPI_TEST_BOARDS=str(trees_dir), **env)
    project.up()
    project.wait_healthy()
    return project.stored_key()


@pytest.mark.contract
def test_router_mode_metrics_carry_the_board(extra_project: Project, tmp_path: Path) -> None:
    """Two models: the router proxies /metrics to its default model's server, which got --metrics-textfile too."""
    key = _pi5_project(
        extra_project,
        tmp_path / "boards",
        LLMPI_EMBEDDING_MODEL="/opt/llmpi/models/gemma-3-270m-q4_k_m.gguf",
        LLMPI_EMBEDDING_ALIAS="gemma-embed",
    )
    models = requests.get(f"{extra_project.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert len(models.json()["data"]) == 2, models.text  # router mode
    board = Board(extra_project, tmp_path / "boards", key)
    text = board.wait_metrics('rpi_throttled{condition="under_voltage"} 1', "llmpi_board_info")
    assert "llamacpp:" in text


def test_metrics_off_the_page_shows_nothing(extra_project: Project, tmp_path: Path, browser: webdriver.Chrome) -> None:
    key = _pi5_project(extra_project, tmp_path / "boards", LLMPI_METRICS="off")
    metrics = requests.get(f"{extra_project.url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert metrics.status_code != 200 and "rpi_throttled" not in metrics.text
    browser.get(f"{extra_project.url}/")
    browser.execute_script("localStorage.clear(); localStorage.setItem('llmpi.apiKey', arguments[0]);", key)
    browser.get(f"{extra_project.url}/")
    wait_for(lambda: "context" in browser.find_element(By.ID, "info").text, 60, what="the page connected")
    for element in ("board-temp", "board-warning", "board-note"):
        assert not browser.find_element(By.ID, element).is_displayed()
    logs = browser.get_log("browser")  # type: ignore[no-untyped-call, unused-ignore]
    assert not [e for e in logs if e.get("level") == "SEVERE"], logs
