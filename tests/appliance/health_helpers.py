"""The one failure state, as the fault tests read it (tests/appliance/test_faults.py, test_hardening.py): Docker's
health log, and the facts that show supervisord gave up on llama-server for good."""

from __future__ import annotations

from tests.compose_helpers import Project, wait_for

VERDICT = "will not be started again until the problem is fixed"  # the FATAL listener's line
# the pids and command lines of the launcher and llama-server in the container (the launcher execs llama-server in
# its place); not this script's own, whose text names both
PROGRAMS = (
    "import os\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    try:\n"
    "        argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
    "    except OSError:\n"
    "        continue\n"
    "    if pid != str(os.getpid()) and any(a.endswith(b'llama-server') or b'launcher' in a for a in argv[:3]):\n"
    "        print(pid, b' '.join(argv).decode(errors='replace'))\n"
)


def health_log(project: Project) -> str:
    """Every output Docker kept of the container's health check (the last 5), oldest first."""
    c = project.container()
    c.reload()
    return "\n".join(str(e["Output"]) for e in (c.attrs["State"].get("Health", {}).get("Log") or []))


def last_health_output(project: Project) -> str:
    c = project.container()
    c.reload()
    log = c.attrs["State"].get("Health", {}).get("Log") or []
    return str(log[-1]["Output"]) if log else ""


def failing_streak(project: Project) -> int:
    """How many health checks in a row have failed (Docker counts them once the start period is over)."""
    c = project.container()
    c.reload()
    return int(c.attrs["State"].get("Health", {}).get("FailingStreak", 0))


def programs(project: Project) -> list[str]:
    """The launcher or llama-server processes running in the container now."""
    code, out = project.exec(["python3", "-c", PROGRAMS])
    assert code == 0, out
    return out.splitlines()


def starts_before_giving_up(project: Project, start_line: str, checks: int = 2) -> int:
    """How many times the log says `start_line` (one per start), once supervisord has given up for good: after the
    FATAL listener's verdict nothing starts llama-server again and nothing restarts the container. Shown without a
    fixed wait: the health check fails `checks` more times (10 s apart: longer than any of supervisord's back-offs
    between attempts, 1-3 s), and meanwhile the count stays what it was, no launcher or llama-server runs, and
    Docker never restarted the container."""
    wait_for(lambda: VERDICT in project.logs(), 60, pause=1, what="the FATAL listener's verdict")
    starts = project.logs().count(start_line)
    streak = failing_streak(project)
    wait_for(
        lambda: failing_streak(project) >= streak + checks,
        30 + 15 * checks,
        pause=1,
        what=f"{checks} more failed health checks after the verdict",
    )
    assert project.logs().count(start_line) == starts, f"started again after the verdict: {start_line!r}"
    assert programs(project) == [], "a launcher or llama-server runs after the verdict"
    c = project.container()
    c.reload()
    assert c.status == "running" and c.attrs["RestartCount"] == 0, "no restart loop"
    return starts
