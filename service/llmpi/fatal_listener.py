"""supervisord event listener for PROCESS_STATE_FATAL.

A program that supervisord gave up on leaves a container that looks up but serves nothing. This listener ends
supervisord instead, so the container exits and Docker's restart policy starts it afresh (with its back-off).
Exception: when the launcher refused to start because of a setting (it wrote the config-error marker), a restart
cannot help; the container then stays up, unhealthy, with the reason in its log and its health status, instead of
looping.

The event protocol: write READY, read a header line and a payload of `len` bytes, answer RESULT 2\\nOK.
Logging goes to stderr; stdout belongs to the protocol.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TextIO

from .markers import config_error_path


def parse_header(line: str) -> dict[str, str]:
    return dict(token.split(":", 1) for token in line.split())


def handle(event: str, payload: str, log: TextIO) -> bool:
    """Return True when supervisord should be stopped."""
    if event != "PROCESS_STATE_FATAL":
        return False
    fields = parse_header(payload.splitlines()[0] if payload else "")
    name = fields.get("processname", "?")
    marker = config_error_path()
    if os.path.exists(marker):
        with open(marker) as f:
            reason = f.read().strip()
        print(
            f"llmpi: {name} will not start until the configuration is fixed: {reason} "
            "(the container stays up and reports unhealthy; fix the setting, then `docker compose up -d`)",
            file=log,
            flush=True,
        )
        return False
    print(f"llmpi: {name} keeps failing (FATAL); stopping the container so Docker restarts it", file=log, flush=True)
    return True


def main(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, log: TextIO = sys.stderr) -> int:
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return 0
        header = parse_header(line)
        payload = stdin.read(int(header.get("len", "0")))
        stop = handle(header.get("eventname", ""), payload, log)
        stdout.write("RESULT 2\nOK")
        stdout.flush()
        if stop:
            os.kill(os.getppid(), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
