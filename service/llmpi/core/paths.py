"""Where the launcher, the health check and the FATAL listener leave word for each other. Standard library `os`
only: the listener lives for the container's whole life, and pathlib with its imports would cost it 1.7 MiB of RSS
(docs/benchmarks.md: all processes beside llama-server within 40 MB)."""

from __future__ import annotations

import contextlib
import os

FALLBACK_RUNTIME_DIR = "/dev/shm/llmpi"  # when /tmp is not writable (a read-only root without its tmpfs)


def runtime_dir_path() -> str:
    """A private per-container scratch directory (not on the data volume): /tmp/llmpi, or /dev/shm/llmpi when /tmp
    cannot be written. Every process decides the same way, so they agree on the place."""
    configured = os.environ.get("LLMPI_RUNTIME_DIR")
    if configured:
        return configured
    preferred = "/tmp/llmpi"
    if os.path.isdir(preferred) and os.access(preferred, os.W_OK):
        return preferred
    if not os.path.exists(preferred) and os.access("/tmp", os.W_OK):
        return preferred
    return FALLBACK_RUNTIME_DIR


def config_error_path() -> str:
    """Written by the launcher when it refuses to start."""
    return os.path.join(runtime_dir_path(), "config-error")


def start_attempts_path() -> str:
    """How many times llama-server was started without serving yet; cleared by the health check on a 200."""
    return os.path.join(runtime_dir_path(), "start-attempts")


def last_words_path() -> str:
    """The last lines llama-server wrote before it exited, kept by the FATAL listener for the launcher's refusal."""
    return os.path.join(runtime_dir_path(), "last-words")


def waiting_path() -> str:
    """What the launcher is waiting for (a worker of the cluster), while it waits; read by the health check."""
    return os.path.join(runtime_dir_path(), "waiting")


def clear_state() -> None:
    """A new container start: no refusal, no attempts, no last words from a start before (a plain `docker run`
    keeps /tmp across restarts)."""
    for path in (config_error_path(), start_attempts_path(), last_words_path(), waiting_path()):
        with contextlib.suppress(OSError):
            os.unlink(path)
