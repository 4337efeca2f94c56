"""Where every process of the container finds the others' files: the one owner of the runtime directory and of
every file name in it. Standard library `os` only, and every path a `str`: the FATAL listener and the board watch
live for the container's whole life, and pathlib with its imports would cost them 1.7 MiB of RSS
(docs/benchmarks.md: all processes beside llama-server within 40 MB)."""

from __future__ import annotations

import contextlib
import os

# service/: the chat page (web/), the catalog (catalog.toml) and supervisord's configurations beside the package
SERVICE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FALLBACK_RUNTIME_DIR = "/dev/shm/llmpi"  # when /tmp is not writable (a read-only root without its tmpfs)

# on the data volume (Settings.data_dir)
API_KEY_FILE = "api_key"  # the key generated at first start
CLUSTER_KEY_FILE = "cluster.key"  # the cluster secret generated on a head (the runtime copy has the same name)
# in the directory the head and its announce service share (Settings.announce_dir)
ANNOUNCE_FILE = "announce.json"  # written by the launcher: what the announcer tells the network
WORKERS_FILE = "workers.json"  # written by the announcer: the workers it hears on the network


def runtime_dir() -> str:
    """A private per-container scratch directory (not on the data volume): /tmp/llmpi, or /dev/shm/llmpi when /tmp
    cannot be written (LLMPI_RUNTIME_DIR in tests). Every process decides the same way, so they agree on the
    place. Nothing is created here: `make_runtime_dir` does that."""
    configured = os.environ.get("LLMPI_RUNTIME_DIR")
    if configured:
        return configured
    preferred = "/tmp/llmpi"
    if os.path.isdir(preferred) and os.access(preferred, os.W_OK):
        return preferred
    if not os.path.exists(preferred) and os.access("/tmp", os.W_OK):
        return preferred
    return FALLBACK_RUNTIME_DIR


def make_runtime_dir() -> str:
    """The runtime directory, made private (0700) when it is missing."""
    d = runtime_dir()
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def runtime_file(name: str) -> str:
    return os.path.join(runtime_dir(), name)


def config_error() -> str:
    """Written by the launcher (or the worker) when it refuses to start; read by the health check and the listener."""
    return runtime_file("config-error")


def start_attempts() -> str:
    """How many times llama-server was started without serving yet; cleared by the health check on a 200."""
    return runtime_file("start-attempts")


def last_words() -> str:
    """The last lines llama-server wrote before it exited, kept by the FATAL listener for the launcher's refusal."""
    return runtime_file("last-words")


def waiting() -> str:
    """What the launcher is waiting for (a worker of the cluster), while it waits; read by the health check."""
    return runtime_file("waiting")


def health() -> str:
    """health.json: the models the health check expects loaded, and the server's key file (written by the launcher)."""
    return runtime_file("health.json")


def models_preset() -> str:
    """models.ini: the router's --models-preset (written by the launcher, rewritten by `llmpi models`)."""
    return runtime_file("models.ini")


def pull_progress() -> str:
    """pull.json: a running pull's progress, for the status page and the health check."""
    return runtime_file("pull.json")


def board_prom() -> str:
    """board.prom: the board watch's metrics, appended by llama-server's /metrics (--metrics-textfile)."""
    return runtime_file("board.prom")


def board_json() -> str:
    """board.json: the board watch's last reading, for `llmpi board`."""
    return runtime_file("board.json")


def server_keys() -> str:
    """The keys llama-server accepts (--api-key-file), one a line."""
    return runtime_file("api_keys")


def admin_keys() -> str:
    """The keys that may manage the router's models (--admin-key-file)."""
    return runtime_file("admin_keys")


def auto_workers() -> str:
    """LLMPI_WORKERS=auto: the workers this container found at its start, as host:port,... (Settings reads it)."""
    return runtime_file("workers.auto")


def cluster_key() -> str:
    """spiped's key file, made from the cluster secret at container start."""
    return runtime_file(CLUSTER_KEY_FILE)


def supervisord_conf() -> str:
    """A head's supervisord configuration with a channel per worker port (the image's, plus the channels)."""
    return runtime_file("supervisord.conf")


def clear_state() -> None:
    """A new container start: no refusal, no attempts, no last words from a start before (a plain `docker run`
    keeps /tmp across restarts)."""
    for path in (config_error(), start_attempts(), last_words(), waiting()):
        with contextlib.suppress(OSError):
            os.unlink(path)
