"""Where every process of the container finds the others' files: the one owner of the runtime directory and of
every file name in it. Standard library `os` only, and every path a `str`: the FATAL listener and the board watch
live for the container's whole life, and pathlib with its imports would cost them 1.7 MiB of RSS
(docs/benchmarks.md: all processes beside llama-server within 64 MiB)."""

from __future__ import annotations

import contextlib
import os

# service/: the chat page (web/), the catalog (catalog.toml) and supervisord's configurations beside the package
SERVICE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FALLBACK_RUNTIME_DIR = "/dev/shm/llmpi"  # when /tmp is not writable (a read-only root without its tmpfs)

# on the data volume (Settings.data_dir)
API_KEY_FILE = "api_key"  # the key generated at first start
USAGE_FILE = "usage.json"  # the usage ledger per key, on the data volume (llama-server's --usage-file)
ACCESS_LOG_FILE = "logs/access.log"  # LLMPI_ACCESS_LOG=file, on the data volume (llama-server's --access-log)
CLUSTER_KEY_FILE = "cluster.key"  # the cluster secret generated on a head (the runtime copy has the same name)
# in the directory the head and its announce service share (Settings.announce_dir)
ANNOUNCE_FILE = "announce.json"  # written by the launcher: what the announcer tells the network
WORKERS_FILE = "workers.json"  # written by the announcer: the workers it hears on the network
HOST_FILE = "host.json"  # written by the announcer: the host's name and its addresses on the network (for HTTPS)


# the files in the runtime directory: runtime_file(NAME) is where each one is
CONFIG_ERROR = "config-error"  # the launcher's (or worker's) refusal; read by the health check and the listener
START_ATTEMPTS = "start-attempts"  # llama-server's starts that never served; cleared by the health check on a 200
LAST_WORDS = "last-words"  # llama-server's last lines before it exited, kept by the FATAL listener
WAITING = "waiting"  # what the launcher waits for (a worker of the cluster); read by the health check
HEALTH = "health.json"  # the models the health check expects loaded, and the server's key file (the launcher's)
MODELS_PRESET = "models.ini"  # the router's --models-preset (the launcher's; `llmpi models` rewrites it)
PULL_PROGRESS = "pull.json"  # a running pull's progress, for the status page and the health check
BOARD_PROM = "board.prom"  # the board watch's metrics, appended to llama-server's /metrics (--metrics-textfile)
BOARD_JSON = "board.json"  # the board watch's last reading, for `llmpi status`
SERVER_KEYS = "api_keys"  # the keys llama-server accepts (--api-key-file), one a line
ADMIN_KEYS = "admin_keys"  # the keys that may manage the router's models (--admin-key-file)
AUTO_WORKERS = "workers.auto"  # LLMPI_WORKERS=auto: the workers found at this container's start (Settings reads it)
CLUSTER_KEY = CLUSTER_KEY_FILE  # spiped's key file, made from the cluster secret at container start
SUPERVISORD_CONF = "supervisord.conf"  # a head's supervisord configuration: the image's plus a channel per worker
CRASH_RECORD = "crash-record"  # llama-server's: written if a fatal signal kills it (--crash-record, patch 0023)
CRASHES = "crashes.json"  # the launcher's: the crashes of the last minutes and the key each came with
REFUSED_KEYS = "refused-keys.json"  # the launcher's: keys refused for a while (fingerprint: until), in the key file


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
    """Where the runtime file `name` (one of the names above) is."""
    return os.path.join(runtime_dir(), name)


def clear_state() -> None:
    """A new container start: no refusal, no attempts, no last words from a start before (a plain `docker run`
    keeps /tmp across restarts)."""
    for name in (CONFIG_ERROR, START_ATTEMPTS, LAST_WORDS, WAITING):
        path = runtime_file(name)
        with contextlib.suppress(OSError):
            os.unlink(path)
