"""A head waits for its workers: each one's description and RPC HELLO through its channel, the same versions as
this head; while one does not answer, the reason is in the log and in the health check's marker."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ..core import failure, paths
from ..core.settings import Settings
from ..host.llama_build import own_versions
from ..plan.split import Board
from . import wire

WORKER_RETRY = 2.0  # seconds between looks at a missing worker
WORKER_LOG_EVERY = 30.0  # seconds between log lines while waiting for the same reason


def describe_workers(s: Settings) -> list[Board]:
    """Each worker, through its channel: its description, its RPC server's HELLO, the same versions as this head."""
    own = own_versions()
    boards = []
    for i, w in enumerate(s.workers):
        info = wire.describe(i, w)
        rpc = wire.hello(i, w)
        wire.check_versions(w, info, rpc, own)
        boards.append(wire.board_from(w, info))
    return boards


def wait_for_workers(
    s: Settings, out: TextIO, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic
) -> list[Board]:
    """The workers' descriptions, waiting for as long as one does not answer: the reason goes to the log (again
    every 30 s if it changes or persists) and to the health check, which reports unhealthy meanwhile. A worker that
    answers with other versions is a refusal (ConfigError), not a wait. `sleep` and `clock`: the time it waits by."""
    if not s.workers:
        return []
    paths.make_runtime_dir()
    waiting = Path(paths.runtime_file(paths.WAITING))
    said, said_at = "", 0.0
    while True:
        try:
            boards = describe_workers(s)
        except wire.WorkerUnreachable as e:
            reason = f"waiting for worker {e}"
            waiting.write_text(reason + "\n")
            if reason != said or clock() - said_at >= WORKER_LOG_EVERY:
                print(f"llmpi: {reason}", file=out, flush=True)
                said, said_at = reason, clock()
            sleep(WORKER_RETRY)
            continue
        with contextlib.suppress(FileNotFoundError):
            waiting.unlink()
        if said:
            print("llmpi: every worker answers", file=out, flush=True)
            # llama-server stopped because a worker went away (it aborts on a lost RPC connection), or a worker was
            # late: not a failed start of the model (MAX_START_ATTEMPTS)
            failure.clear_start_attempts()
        return boards
