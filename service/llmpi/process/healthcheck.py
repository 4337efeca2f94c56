"""Docker HEALTHCHECK: healthy only when llama-server answers /health with 200 (model loaded, serving) and, in router
mode, when /models says that each model loaded at start (health.json) is loaded, and, when the Ollama API is on, when
its port takes connections.

While the server is still starting, the check waits, up to LOAD_WAIT seconds, instead of failing: the launcher
running or the model loading (connection refused, or /health 503 "Loading model"), or the launcher pulling
LLMPI_MODEL (503 with `"status": "pulling"` and the progress, which the check prints). Docker then shows `starting`
for a slow load however long it takes, and needs no long start period, so a real failure is reported within about
30 s: a refusal (the launcher's marker: a wrong setting, a model that does not fit or cannot be pulled, a model
llama-server could not load) fails at once with the reason, which `docker inspect --format '{{json .State.Health}}'`
shows. A server that is up but refuses work (503 while it drains on stop) fails at once too. A pull that takes
longer than three checks (about an hour) shows `unhealthy` with its progress until it ends.

/health is public, so no key is needed; /models is not, so the check reads the key file that llama-server reads.

A cluster head (LLMPI_WORKERS) is healthy only while every worker's port answers: an idle head whose worker went away
would fail its next request. When llama-server's own connection to a worker was closed from the other end, the check
stops llama-server, so that it reconnects (the launcher waits for the worker) before a request finds out. While the
launcher waits for a worker, the check fails at once with what it waits for.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from ..cluster import wire
from ..core import failure, keys, paths
from ..core.env import ConfigError
from ..core.settings import Settings, Worker
from ..models import progress
from .server import restart_server

LOAD_WAIT = 20 * 60  # below the Dockerfile's HEALTHCHECK --timeout


def models_not_loaded(base: str) -> list[str]:
    """Router mode: the models named in the launcher's health.json whose status is not "loaded" (all, on error)."""
    try:
        health = json.loads(Path(paths.runtime_file(paths.HEALTH)).read_text())
    except (OSError, ValueError):
        return []
    wanted = [str(m) for m in health.get("models") or []]
    if not wanted:
        return []
    request = urllib.request.Request(f"{base}/models")
    key = keys.first_key(Path(health["key_file"])) if health.get("key_file") else None
    if key:
        request.add_header("Authorization", "Bearer " + key)
    with urllib.request.urlopen(request, timeout=4) as resp:
        data = json.load(resp).get("data", [])
    status = {m.get("id"): (m.get("status") or {}).get("value") for m in data if isinstance(m, dict)}
    return [f"{m} ({status.get(m, 'missing')})" for m in wanted if status.get(m) != "loaded"]


def pull_line(body: str) -> str:
    """The launcher's pull, from /health's 503 body: what, how far, how fast."""
    try:
        snap = json.loads(body).get("pull")
    except ValueError:
        snap = None
    return progress.describe(snap) if isinstance(snap, dict) else "pulling the model"


def pulling_now() -> str:
    """The pull's progress from its file, for when the status page is not answering."""
    snap = progress.read_progress()
    return "; " + progress.describe(snap) if snap is not None else ""


def workers_missing(workers: Sequence[Worker]) -> list[str]:
    """The workers whose port does not answer now: the next request would fail, so the head is not healthy even
    while idle (llama.cpp notices a lost worker only when it next sends it work)."""
    out = []
    for w in workers:
        why = wire.reachable(w, timeout=2.0)
        if why is not None:
            out.append(f"{w.name} ({why})")
    return out


def reconnect_lost_workers(workers: Sequence[Worker]) -> list[str]:
    """The workers whose connection the idle head lost (a worker that restarted or went away): llama-server is
    stopped (SIGTERM: it drains, and supervisord starts the launcher again, which waits for the worker and loads
    the model anew), instead of failing the next request. Returns the workers' names."""
    lost = [workers[i].name for i in wire.lost_channels(len(workers))]
    if lost:
        restart_server(served=True)  # it served: not a failed start
    return lost


def door_answers(port: int) -> bool:
    """Whether the Ollama door (llmpi.ollama) takes connections on its port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def probe(base: str, workers: Sequence[Worker] = (), ollama_port: int | None = None) -> tuple[str, str]:
    """One look: ("ok" | "starting" | "failed", what was seen). `workers`: a cluster head's; `ollama_port`: the
    Ollama door's, when it is on (it starts in a fraction of a second, long before the model is loaded)."""
    refused = failure.refused_reason()
    if refused is not None:
        return "failed", f"llmpi refused to start: {refused}"
    with contextlib.suppress(OSError):
        return "failed", f"llmpi is waiting: {Path(paths.runtime_file(paths.WAITING)).read_text().strip()}"
    url = f"{base}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            if resp.status != 200:
                return "failed", f"{url}: {resp.status}"
        waiting = models_not_loaded(base)
        if waiting:
            return "starting", "not loaded yet: " + ", ".join(waiting)
        lost = reconnect_lost_workers(workers)
        if lost:
            return "failed", f"lost the connection to worker {', '.join(lost)}: llama-server restarts to reconnect"
        missing = workers_missing(workers)
        if missing:
            return "failed", "a worker does not answer: " + ", ".join(missing)
        if ollama_port is not None and not door_answers(ollama_port):
            return "failed", f"the Ollama API (port {ollama_port}) does not answer (docker compose logs llmpi)"
        return "ok", f"{url}: 200"
    except urllib.error.HTTPError as e:
        body = e.read(4000).decode(errors="replace")
        if e.code == 503 and '"pulling"' in body:
            return "starting", f"{url}: 503 ({pull_line(body)})"
        if e.code == 503 and "loading" in body.lower():
            return "starting", f"{url}: 503 (loading the model)"
        return "failed", f"{url}: {e.code} {body.strip()[:300]}"
    except (ConnectionRefusedError, ConnectionResetError) as e:
        return "starting", f"{url}: not answering yet ({e}){pulling_now()}"
    except urllib.error.URLError as e:
        if isinstance(e.reason, ConnectionRefusedError | ConnectionResetError):
            return "starting", f"{url}: not answering yet ({e.reason}){pulling_now()}"
        return "failed", f"{url}: {e.reason}"
    except OSError as e:  # a timeout: up, but not answering
        return "failed", f"{url}: {e}"


def main(
    wait: float = LOAD_WAIT, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic
) -> int:
    """Docker's check: 0 when healthy, 1 otherwise, with what was seen on stdout. `sleep` and `clock`: the time it
    waits by."""
    try:
        s = Settings.read(os.environ)
    except ConfigError as e:  # the launcher refuses with the same reason
        print(f"llmpi refused to start: {e}")
        return 1
    base = f"http://127.0.0.1:{s.server_port}"
    deadline = clock() + wait
    while True:
        state, seen = probe(base, s.workers, s.ollama_port)
        if state == "ok":
            failure.clear_start_attempts()  # it served: a later crash gets its own attempts
            print(seen)
            return 0
        if state == "failed" or clock() >= deadline:
            print(seen if state == "failed" else f"still starting after {wait:.0f} s: {seen}")
            return 1
        sleep(1)


if __name__ == "__main__":
    sys.exit(main())
