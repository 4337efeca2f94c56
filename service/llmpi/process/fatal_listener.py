"""supervisord event listener: keeps llama-server's last words and gives the verdict when supervisord gives up.

Nothing here ever stops the container: a program that cannot start leaves "container up, unhealthy, reason in the
health log and the container log" (the one failure state), never a Docker restart loop.

* PROCESS_LOG_STDERR: llama-server logs everything to stderr; the last lines of its latest start
  (PROCESS_STATE_STARTING) are kept in memory.
* PROCESS_STATE_EXITED (unexpected) / BACKOFF: those lines are written to the last-words file, which the launcher
  names as the reason when llama-server has stopped too often without ever serving
  (llmpi.core.failure.MAX_START_ATTEMPTS).
* PROCESS_STATE_FATAL: supervisord will not start the program again; the reason is logged (the launcher's refusal
  marker, or the last words), and the health check reports it.

The event protocol: write READY, read a header line and a payload of `len` bytes, answer RESULT 2\\nOK.
Logging goes to stderr; stdout belongs to the protocol.

This process also hosts the board watch (llmpi.host.board): while it waits for supervisord's next event it polls the
board once a second. A process of its own for the watch cost 12.6 MiB for the container's whole life; here it adds
about 2.4 MiB (docs/board.md), which keeps every process beside llama-server, the Ollama door included, within
64 MiB (docs/benchmarks.md).
Nothing else is imported: the process is resident for the container's whole life.
"""

from __future__ import annotations

import os
import select
import sys
from typing import TextIO

from ..core import paths
from ..host.board import Watch, start_watch

KEEP_LINES = 12


def parse_header(line: str) -> dict[str, str]:
    return dict(token.split(":", 1) for token in line.split())


class Listener:
    def __init__(self, log: TextIO) -> None:
        self.log = log
        self.lines: list[str] = []
        self.partial = ""

    def handle(self, event: str, payload: str) -> None:
        head, _, body = payload.partition("\n")
        fields = parse_header(head)
        if fields.get("processname", "llama-server") != "llama-server":
            return  # a cluster head's spiped channels (llmpi.cluster.channels.head_programs) restart on their own
        if event == "PROCESS_LOG_STDERR":
            self.keep(body)
        elif event == "PROCESS_STATE_STARTING":
            self.lines, self.partial = [], ""  # a new attempt: its own last words
        elif event in ("PROCESS_STATE_EXITED", "PROCESS_STATE_BACKOFF"):
            if event == "PROCESS_STATE_BACKOFF" or fields.get("expected") == "0":
                self.save_last_words()
        elif event == "PROCESS_STATE_FATAL":
            self.verdict(fields.get("processname", "?"))

    def keep(self, text: str) -> None:
        chunk = self.partial + text
        *complete, self.partial = chunk.split("\n")
        self.lines.extend(line.rstrip() for line in complete if line.strip())
        del self.lines[:-KEEP_LINES]

    def last_words(self) -> str:
        lines = [*self.lines, self.partial.strip()] if self.partial.strip() else self.lines
        # the error lines say why; without any, the last lines
        errors = [line for line in lines if " E " in f" {line} " or "error" in line.lower() or "failed" in line]
        return " | ".join((errors or lines)[-4:])[-1500:]

    def save_last_words(self) -> None:
        words = self.last_words()
        if not words:
            return
        try:
            os.makedirs(os.path.dirname(paths.runtime_file(paths.LAST_WORDS)), mode=0o700, exist_ok=True)
            with open(paths.runtime_file(paths.LAST_WORDS), "w") as f:
                f.write(words + "\n")
        except OSError as e:
            print(f"llmpi: cannot keep llama-server's last words: {e}", file=self.log, flush=True)

    def verdict(self, name: str) -> None:
        marker = paths.runtime_file(paths.CONFIG_ERROR)
        reason = ""
        if os.path.exists(marker):
            with open(marker) as f:
                reason = f.read().strip()
        reason = reason or self.last_words() or "see the lines above"
        print(
            f"llmpi: {name} will not be started again until the problem is fixed: {reason} "
            "(the container stays up and reports unhealthy; fix it, then `docker compose up -d --force-recreate`)",
            file=self.log,
            flush=True,
        )


def wait_for_event(stdin: TextIO, watch: Watch) -> None:
    """Until supervisord sends the next event, the board watch polls when due. supervisord sends nothing before
    READY, so stdin's buffer is empty here and waiting on its descriptor is exact."""
    while True:
        watch.tick()
        if select.select([stdin], [], [], watch.seconds_left())[0]:
            return


def main(
    stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, log: TextIO = sys.stderr, watch: Watch | None = None
) -> int:
    """Answers supervisord's events for as long as it sends them; with a board `watch`, it polls between them."""
    listener = Listener(log)
    while True:
        stdout.write("READY\n")
        stdout.flush()
        if watch is not None:
            try:
                wait_for_event(stdin, watch)
            except Exception as e:  # the board watch must never end the listener: it stops, the listener goes on
                print(f"llmpi: the board watch stopped: {type(e).__name__}: {e}", file=log, flush=True)
                watch = None
        line = stdin.readline()
        if not line:
            return 0
        header = parse_header(line)
        payload = stdin.read(int(header.get("len", "0")))
        try:
            listener.handle(header.get("eventname", ""), payload)
        except Exception as e:  # a bad event must not end the listener
            print(f"llmpi: event listener: {type(e).__name__}: {e}", file=log, flush=True)
        stdout.write("RESULT 2\nOK")
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main(watch=start_watch(os.environ, sys.stderr)))
