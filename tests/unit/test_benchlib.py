"""benchlib, what the benchmark scripts and the tests share: waits, compose projects, processes' memory."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from benchlib import ROOT, compose, host, sse, wait

pytestmark = pytest.mark.unit


# --- wait -------------------------------------------------------------------------------------------------------


def test_wait_for_polls_until_the_fact_holds_and_counts_os_errors_as_not_yet() -> None:
    answers: Iterator[OSError | bool] = iter([OSError("refused"), False, True])

    def check() -> bool:
        answer = next(answers)
        if isinstance(answer, OSError):
            raise answer
        return answer

    assert wait.wait_for(check, 60, pause=0) >= 0
    assert next(answers, None) is None  # asked exactly three times


def test_wait_for_names_what_it_waited_for_and_adds_the_detail() -> None:
    with pytest.raises(TimeoutError, match=r"(?s)timed out after 0s waiting for the model:\nlast log line"):
        wait.wait_for(lambda: False, 0, what="the model", detail=lambda: "last log line")


def test_wait_for_stops_at_once_when_what_it_waits_for_has_stopped() -> None:
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return False

    with pytest.raises(RuntimeError, match="llama-server: stopped before the wait was over"):
        wait.wait_for(check, 3600, what="llama-server", alive=lambda: False)
    assert len(calls) == 1


def test_other_errors_are_not_swallowed() -> None:
    def check() -> bool:
        raise ValueError("a bug in the check")

    with pytest.raises(ValueError, match="a bug"):
        wait.wait_for(check, 3600)


class _Health(http.server.BaseHTTPRequestHandler):
    statuses: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        self.send_response(self.statuses.pop(0) if self.statuses else 200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    """A /health on this machine's loopback that answers 503 twice, then 200."""
    _Health.statuses = [503, 503]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_status_returns_error_statuses_and_wait_ok_waits_for_200(health_server: str) -> None:
    assert wait.http_status(f"{health_server}/health") == 503
    assert wait.wait_ok(f"{health_server}/health", 30, pause=0) >= 0
    assert _Health.statuses == []


def test_http_status_raises_an_os_error_when_nothing_answers() -> None:
    with pytest.raises(OSError):
        wait.http_status("http://127.0.0.1:9/health", timeout=2)  # the discard port: nothing listens


# --- compose ----------------------------------------------------------------------------------------------------


def test_clean_env_drops_this_shell_s_settings_but_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPI_MODEL", "from-the-shell")
    monkeypatch.setenv("LLMPI_IMAGE", "llmpi:test")
    env = compose.clean_env({**compose.LOOPBACK, "LLMPI_THREADS": "2"})
    assert "LLMPI_MODEL" not in env and env["LLMPI_IMAGE"] == "llmpi:test"
    assert env["LLMPI_BIND_ADDRESS"] == "127.0.0.1" and env["LLMPI_HOST_PORT"] == "" and env["LLMPI_THREADS"] == "2"
    user = compose.Project("p", {"LLMPI_THREADS": "2"}, user_env=True).environment()
    assert user["LLMPI_MODEL"] == "from-the-shell" and user["LLMPI_THREADS"] == "2"


def test_a_project_runs_docker_compose_with_its_name_files_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[dict[str, Any]] = []

    def fake_run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        ran.append({"cmd": cmd, **kw})
        out = "0.0.0.0:49153\n" if "port" in cmd else ""
        return subprocess.CompletedProcess(cmd, 0, out, "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    extra = Path("/tmp/extra.yaml")
    project = compose.Project("llmpi-x", {"LLMPI_PARALLEL": "1"}, [compose.COMPOSE_FILE, extra])
    project.up("llmpi", recreate=True)
    assert project.url == "http://127.0.0.1:49153"
    project.down()
    head = ["docker", "compose", "-p", "llmpi-x", "-f", str(ROOT / "compose.yaml"), "-f", str(extra)]
    assert ran[0]["cmd"] == [*head, "up", "-d", "--no-build", "--force-recreate", "llmpi"]
    assert ran[1]["cmd"] == [*head, "port", "llmpi", "8080"]
    assert ran[2]["cmd"] == [*head, "down", "-v", "--remove-orphans", "--timeout", "10"]
    assert all(r["env"]["LLMPI_PARALLEL"] == "1" and r["cwd"] == ROOT for r in ran)


def test_exec_argv_is_the_launcher_s_last_exec_line() -> None:
    logs = (
        "llmpi: exec /opt/llama/bin/llama-server --ctx-size 4096\n"
        "\x1b[32mllmpi: exec /opt/llama/bin/llama-server --ctx-size 8192 --parallel 2\x1b[0m\n"
        "srv  log: listening\n"
    )
    assert compose.exec_argv(logs) == ["/opt/llama/bin/llama-server", "--ctx-size", "8192", "--parallel", "2"]
    assert compose.exec_argv("no such line") == []


# --- host -------------------------------------------------------------------------------------------------------

STATUS = "Name:\tllama-server\nVmHWM:\t  300000 kB\nVmRSS:\t  204800 kB\nRssAnon:\t  102400 kB\nRssFile:\t  " \
    "100352 kB\nRssShmem:\t    2048 kB\nThreads:\t4\n"  # fmt: skip


def test_a_process_s_memory_from_its_status_and_command_line() -> None:
    p = host._proc(42, STATUS, "/opt/llama/bin/llama-server\0--port\x008080\0")
    assert p is not None
    assert (p.rss, p.hwm, p.anon, p.file, p.shmem) == (200 << 20, 300000 << 10, 100 << 20, 98 << 20, 2 << 20)
    assert p.program == "/opt/llama/bin/llama-server"
    assert p.key == "42 /opt/llama/bin/llama-server --port 8080 "
    assert host._proc(2, "Name:\tkthreadd\nThreads:\t1\n", "") is None  # a kernel thread: no memory, no command


def test_this_process_and_this_machine() -> None:
    [me] = host.host_processes([os.getpid()])
    assert me.pid == os.getpid() and me.rss > 0 and "python" in me.command
    m = host.machine()
    assert set(m) == {"arch", "cpu", "cpus", "memory_gib", "kernel"}
    assert m["cpus"] and m["memory_gib"] > 0


def test_the_stream_reader_says_whether_done_ended_it() -> None:
    stream = sse.Stream([b'data: {"a": 1}\n\ndata: [DONE]\n\n'])
    assert list(stream) == [{"a": 1}] and stream.done
    cut = sse.Stream([b'data: {"a": 1}\n\n'])
    assert list(cut) == [{"a": 1}] and not cut.done
