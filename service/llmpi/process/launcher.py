"""The launcher: from LLMPI_* settings and the hardware to a running llama-server.

Run by supervisord as `python3 -m llmpi.process.launcher`. After the checks, this process *becomes* llama-server
(os.execvpe), so supervisord supervises the server itself and signals reach it directly. Any llama-server option
that has no LLMPI_* setting stays available through its own LLAMA_ARG_* variable, which wins over the launcher's
choice for the same option.

This module only puts the steps in order; each lives where its role is:
1. the settings (llmpi.core.settings), read once;
2. the data volume's format (llmpi.volume.layout): a new one recorded, an older one migrated, a newer one refused;
3. the workers, waited for (llmpi.cluster.waiting) while the health check reports why;
4. LLMPI_MODEL and LLMPI_DRAFT_MODEL by name (llmpi.models.resolve): the one step that may download, behind the
   status page (llmpi.process.statuspage);
5. the serving plan (llmpi.plan.serving): every decision, without touching a file;
6. the side effects, in view: the keys (llmpi.core.keys), the runtime files, the announcer's file
   (llmpi.lan.announce), then the exec.
Anything that fails ends in the one failure state (llmpi.core.failure).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, TextIO

from ..cluster.waiting import wait_for_workers
from ..core import failure, keys
from ..core.env import ConfigError
from ..core.files import write_atomic
from ..core.limits import Limits
from ..core.settings import Settings
from ..host import hardware
from ..lan.announce import tell_announcer
from ..models import resolve
from ..plan.options import WEB_DIR
from ..plan.serving import Plan, plan
from ..tls import certs
from ..volume import backup, layout
from . import crashes
from .statuspage import StatusPage

NO_WORKER_HEARD = (
    "LLMPI_WORKERS=auto: no worker announced itself on the network when this container started. Start each worker "
    "(docker compose --profile worker up -d worker), see `docker compose logs announce` on this board, then: docker "
    "compose restart llmpi"
)


class Prepared(NamedTuple):
    settings: Settings
    plan: Plan
    auth: keys.Auth


def status_page(s: Settings) -> resolve.StatusPage:
    """The page that answers on the server's port while a model downloads, showing the pull's progress."""
    return lambda progress: StatusPage(s.host, s.port, WEB_DIR / "index.html", progress, Limits.of(s))


def write_files(files: Mapping[Path, str]) -> None:
    """The runtime files, each replaced whole (the router may re-read its preset at any time)."""
    for path, text in files.items():
        write_atomic(path, text)


def make_certificates(s: Settings, out: TextIO) -> None:
    """LLMPI_TLS: the local CA and the server certificate for the host's names and addresses (llmpi.tls.certs), made
    when missing, when the names changed or when it expires soon."""
    if s.tls_cert_file is not None:
        certs.ensure_certificates(s, [])  # the user's own: only checked
        print(f"llmpi: HTTPS with {s.tls_cert_file} (LLMPI_TLS_CERT_FILE)", file=out, flush=True)
        return
    # the announcer (on the host's network) says the host's name and addresses; at the very first start it may not
    # have yet, so that start waits a moment for it; later starts take what it wrote before (renewing on a change)
    first = not certs.served_files(s).cert.is_file()
    hostname, addresses = certs.host_facts(s.announce_dir, certs.HOST_WAIT if first else 0)
    names = certs.certificate_names(s, hostname, addresses)
    files, done = certs.ensure_certificates(s, names)
    if done:
        print(f"llmpi: {done}", file=out, flush=True)
    assert files.ca is not None
    print(f"llmpi: HTTPS certificate for {', '.join(names)}; devices trust the local CA, SHA-256 fingerprint "
          f"{certs.pem_fingerprint(files.ca)} (`llmpi tls ca` prints it)", file=out, flush=True)  # fmt: skip


# glibc's allocator serves allocations of at least this size with mmap and gives them back to the system when they
# are freed; its default threshold rises to 32 MiB after the first large free, after which the prompt cache's state
# copies (megabytes each, made and freed as conversations come and go) stay in the heap once freed, and the server's
# resident memory drifts above the launcher's plan (docs/environment.md, the soak's verdict)
MMAP_THRESHOLD = 1 << 20


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """llama-server's environment: everything but the key settings (the server reads keys from its files) and the
    cluster secret (spiped's); glibc's mmap threshold fixed (MMAP_THRESHOLD) unless GLIBC_TUNABLES is set."""
    child = {
        k: v for k, v in env.items() if not k.startswith(("LLMPI_API_KEY", "LLMPI_ADMIN_KEY", "LLMPI_CLUSTER_SECRET"))
    }
    child.setdefault("GLIBC_TUNABLES", f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}")
    return child


def prepare(env: Mapping[str, str], hw: hardware.Hardware, out: TextIO = sys.stdout) -> Prepared:
    """All that main() does before the exec: settings, the workers, the model, plan, keys, runtime files."""
    settings = Settings.read(env)
    layout.prepare_volume(settings.data_dir, out)  # before anything reads it: its format, migrated forward
    for left in backup.remove_unfinished_restores(settings.data_dir, settings.models_dir):
        print(f"llmpi: removed {left}, what a restore stopped half-way had read (nothing of it was in place)", file=out)
    if settings.workers_auto and not settings.workers:
        raise ConfigError(NO_WORKER_HEARD)
    if settings.tls:  # before anything slow: the Ollama door waits for these files to serve HTTPS
        make_certificates(settings, out)
    boards = wait_for_workers(settings, out)  # LLMPI_WORKERS: waits (unhealthy) until each answers
    page = status_page(settings)
    settings = resolve.model_on_board(settings, hw, out, page, boards)  # may download it (a status page answers)
    settings = resolve.draft_on_board(settings, hw, out, page)  # LLMPI_DRAFT_MODEL by name: may download it too
    p = plan(settings, hw, boards)
    auth = keys.apply_keys(settings, out)  # may generate the key (on the data volume)
    if settings.access_log == "file":  # llama-server writes and rotates it there
        settings.access_log_file.parent.mkdir(parents=True, exist_ok=True)
    if crashes.account_for_last_crash(keys.key_names(auth, settings.data_dir), out):  # may refuse a key for a while
        keys.write_server_keys(auth, settings.data_dir, settings.key_max_slots)
    write_files(p.files)  # the router's preset, health.json (write_atomic makes the runtime directory)
    tell_announcer(settings, p.announced, out)  # /announce/announce.json
    return Prepared(settings, p, auth)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        refusal = failure.earlier_refusal()
        if refusal:
            return failure.refuse(refusal)
        env = dict(os.environ)
        settings, p, auth = prepare(env, hardware.detect(), sys.stdout)
        failure.count_start_attempt()
    except ConfigError as e:
        return failure.refuse(str(e))
    except Exception as e:  # any other failure is a refusal too, never a restart loop
        traceback.print_exc(file=sys.stderr)
        return failure.refuse(f"the launcher failed: {type(e).__name__}: {e}")
    for note in p.notes:
        print(f"llmpi: {note}", flush=True)
    if auth.generated:
        print(keys.banner(settings.host_port, settings.data_dir), flush=True)
    print("llmpi: exec " + " ".join(p.argv), flush=True)
    os.execvpe(p.argv[0], p.argv + list(argv or []), child_env(env))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
