"""The one failure state: a start that cannot succeed ends with the reason in the log and in a marker the health
check prints, and exit 78 (EX_CONFIG), after which supervisord gives up on the program and the container stays up,
unhealthy. Also the count of llama-server's starts that never served, which ends in the same state."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from . import paths
from .env import CONFIG_ERROR_EXIT

# a server that exits this many times without ever answering /health with 200 is not started again: the container
# stays up, unhealthy, with llama-server's last words as the reason (a model it cannot load, an OOM kill)
MAX_START_ATTEMPTS = 3


def refuse(reason: str, who: str = "llmpi") -> int:
    """The one failure state: the reason in the log and in the marker the health check prints; exit 78 (EX_CONFIG),
    after which supervisord gives up on the program and the container stays up, unhealthy."""
    print(f"{who}: configuration error: {reason}", file=sys.stderr, flush=True)
    paths.make_runtime_dir()
    Path(paths.runtime_file(paths.CONFIG_ERROR)).write_text(reason + "\n")
    return CONFIG_ERROR_EXIT


def earlier_refusal() -> str | None:
    """Why this container must not start llama-server again: a refusal before in this container (final until the
    cause is fixed and the container recreated or restarted, which clears the runtime directory: never redo a
    download or a load in a loop), or too many starts that never served."""
    refused = refused_reason()
    if refused is not None:
        return refused or "refused before (no reason kept)"
    return failed_starts_refusal()


def refused_reason() -> str | None:
    """The reason the launcher (or the worker) gave when it refused to start, if it did."""
    try:
        return Path(paths.runtime_file(paths.CONFIG_ERROR)).read_text().strip()
    except OSError:
        return None


def failed_starts_refusal() -> str | None:
    """The reason to refuse when llama-server already exited MAX_START_ATTEMPTS times without ever serving (the
    health check clears the count when /health answers 200)."""
    attempts = start_attempts()
    if attempts < MAX_START_ATTEMPTS:
        return None
    try:
        last = Path(paths.runtime_file(paths.LAST_WORDS)).read_text().strip()
    except OSError:
        last = ""
    return (
        f"llama-server stopped {attempts} times before it could serve; not starting it again. "
        + (f"Its last words: {last}" if last else "See the lines above in the log.")
        + " Fix the cause (a model llama.cpp cannot load, too little memory), then `docker compose up -d "
        "--force-recreate`."
    )


def start_attempts() -> int:
    try:
        return int(Path(paths.runtime_file(paths.START_ATTEMPTS)).read_text() or "0")
    except (OSError, ValueError):
        return 0


def count_start_attempt() -> None:
    """One more start of llama-server (called right before the exec: the launcher's own refusals do not count)."""
    paths.make_runtime_dir()
    Path(paths.runtime_file(paths.START_ATTEMPTS)).write_text(str(start_attempts() + 1))


def clear_start_attempts() -> None:
    """llama-server served (or stopped for a reason that is not its own): the count starts again."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths.runtime_file(paths.START_ATTEMPTS))
