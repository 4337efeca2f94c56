"""What scripts/bench and scripts/bench-embeddings share."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# run inside a container by `docker exec ... python3 -c`: RSS, pid and command line of every process but itself
_RSS_SCRIPT = (
    "import os\n"
    "for p in os.listdir('/proc'):\n"
    "  if p.isdigit() and int(p) != os.getpid():\n"
    "    try:\n"
    "      s=open(f'/proc/{p}/status').read(); c=open(f'/proc/{p}/cmdline').read().replace(chr(0),' ')[:80]\n"
    "    except OSError: continue\n"
    "    r=[l.split()[1] for l in s.splitlines() if l.startswith('VmRSS:')]\n"
    "    if r and c.strip(): print(int(r[0])*1024, p, c)\n"
)


def rss_by_process(container: str) -> dict[str, int]:
    """Resident bytes of each process in a container, keyed by "pid command line"."""
    out = subprocess.run(
        ["docker", "exec", container, "python3", "-c", _RSS_SCRIPT], check=True, capture_output=True, text=True
    ).stdout
    return {f"{line.split(' ', 2)[1]} {line.split(' ', 2)[2]}": int(line.split()[0]) for line in out.splitlines()}


def git_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()
