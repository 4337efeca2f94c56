"""Where the launcher leaves word for the health check and the FATAL listener. Standard library `os` only: the
listener lives for the container's whole life, and pathlib with its imports would cost it 1.7 MiB of RSS
(docs/benchmarks.md: all processes beside llama-server within 40 MB)."""

from __future__ import annotations

import os


def runtime_dir_path() -> str:
    """A private per-container scratch directory (not on the data volume)."""
    return os.environ.get("LLMPI_RUNTIME_DIR", "/tmp/llmpi")


def config_error_path() -> str:
    """Written by the launcher when it refuses to start."""
    return os.path.join(runtime_dir_path(), "config-error")
