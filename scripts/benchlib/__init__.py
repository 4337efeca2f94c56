"""What the benchmark scripts (scripts/bench, soak, bench-cluster, ...) and the tests share:

- `sse`: reading a server-sent event stream (on bytes, split at b"\\n" only);
- `wait`: waiting for a fact (a status, a log line) with a timeout and a message that names it;
- `compose`: one compose project of the llmpi compose file: up, down, logs, its port, waiting until it is healthy;
- `host`: the commit, this machine's CPU and memory, and the resident memory of processes (host or container).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository (scripts/benchlib/ is two levels down)
