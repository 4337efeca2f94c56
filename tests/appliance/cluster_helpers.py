"""What the cluster tests share (tests/appliance/test_cluster.py, tests/lan/test_lan_cluster.py): the workers' memory,
whether this CPU's backend needs more on the head, and a service's log as text. Test modules import from here, never
from each other."""

from __future__ import annotations

import re
from pathlib import Path

from tests.compose_helpers import Project

# An AMX CPU's backend takes 256 MiB more on the head (llmpi's fit: AMX_WORK).
AMX = " amx_tile" in Path("/proc/cpuinfo").read_text()
# the embedded Gemma 3 270M's layers are about 5 MB each: a worker of 100 MB holds about a third of them
WORKER_MEMORY = "100M"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def service_log(project: Project, service: str, *compose_args: str) -> str:
    """A service's log as text (compose writes terminal control sequences into it even with --no-color);
    `compose_args` go before `logs` (the profiles that name the service, for one in a profile)."""
    out = project.compose(*compose_args, "logs", "--no-color", "--no-log-prefix", service, check=False).stdout
    return ANSI.sub("", out)
