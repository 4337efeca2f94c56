"""`llmpi`, the command line inside the container (`docker compose exec llmpi llmpi ...`).

    llmpi keys list            the keys that open the API (named keys by name; values shortened; shares, limits)
    llmpi keys show [NAME]     print a key: the generated one, or a named one
    llmpi keys add NAME [--max-slots N] [--priority high] [--daily-tokens N] [--hourly-tokens N]
                               make a key for one device (printed once, here, never in the log)
    llmpi keys set NAME [...]  change a named key's share or limits
    llmpi keys revoke NAME     remove a named key
    llmpi keys usage [--json]  tokens and requests per key: today, this week, since the start (llmpi.cli.keys)
    llmpi models [list|pull NAME|rm NAME [--force]|show NAME]   the models on this board (llmpi.cli.models)
    llmpi status               the server's state and the board's health: temperature, throttling, clocks, memory
    llmpi tls ca               the local CA's certificate for devices to trust (LLMPI_TLS), with its fingerprint
    llmpi backup [--models] > file.tar   keys, cluster secret, CA, manifests (and model files) as a tar stream
    llmpi restore < file.tar   put a backup in place (then: docker compose restart llmpi) (llmpi.cli.volume)

A key change takes effect at once: llama-server re-reads its key file when it changes; requests already running
finish.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from ..cluster import channels, wire
from ..core import failure
from ..core.env import ConfigError
from ..core.settings import Settings
from ..host import board
from ..host.llama_build import own_versions
from ..plan import fit
from ..process import healthcheck
from ..tls import certs
from . import keys as keys_cli
from . import models as models_cli
from . import volume as volume_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmpi", description="llmpi inside the container")
    sub = p.add_subparsers(dest="command", required=True)
    keys_cli.add_parsers(sub)
    m = sub.add_parser("models", help="the models on this board").add_subparsers(dest="action")
    m.add_parser("list", help="name, kind, quant, size, loaded or not")
    pull = m.add_parser("pull", help="download a model: a catalog name or a hub repo (owner/name[:QUANT])")
    pull.add_argument("name")
    pull.add_argument(
        "--progress", action="store_true", help="write the pull's progress file (the Ollama door's /api/pull reads it)"
    )
    rm = m.add_parser("rm", help="remove a pulled model")
    rm.add_argument("name")
    rm.add_argument("--force", action="store_true", help="even the model LLMPI_MODEL serves")
    show = m.add_parser("show", help="a model's manifest")
    show.add_argument("name")
    c = sub.add_parser("cluster", help="several boards, one model").add_subparsers(dest="action", required=True)
    c.add_parser("secret", help="print the cluster secret to give each worker (made on the head if there is none)")
    c.add_parser("status", help="each worker of LLMPI_WORKERS: reachable, versions, memory")
    sub.add_parser("status", help="the server's state and the board's health (temperature, throttling, clocks)")
    t = sub.add_parser("tls", help="HTTPS on the home network").add_subparsers(dest="action", required=True)
    t.add_parser("ca", help="the local CA's certificate for devices to trust, and its SHA-256 fingerprint")
    b = sub.add_parser("backup", help="keys, cluster secret, CA and model manifests as a tar stream on stdout")
    b.add_argument("--models", action="store_true", help="the model files too (gigabytes)")
    sub.add_parser("restore", help="put a backup (a tar stream on stdin) in place; then restart the container")
    return p


def tls_ca(s: Settings) -> str:
    """The certificate devices trust to reach this board over HTTPS, PEM, then its fingerprint as a comment line."""
    if not s.tls:
        raise ConfigError("LLMPI_TLS=off: this board serves no HTTPS")
    files = certs.served_files(s)
    if files.ca is None:
        raise ConfigError(f"the board serves your own certificate ({s.tls_cert_file}): trust its issuer")
    if not files.ca.is_file():
        raise ConfigError("there is no local CA yet: it is made at the server's first start with LLMPI_TLS=auto")
    pem = files.ca.read_text().strip()
    return f"{pem}\n# SHA-256 fingerprint: {certs.pem_fingerprint(files.ca)}"


def cluster_secret(s: Settings) -> str:
    """LLMPI_CLUSTER_SECRET if set, else the head's generated one (made now if the head has not made it yet)."""
    if s.cluster_secret is not None:
        return s.cluster_secret
    return channels.load_or_create_secret(s.data_dir / channels.KEY_FILE_NAME)[0]


def cluster_status(s: Settings) -> str:
    """One line a worker, as the launcher sees it at start (through the channels the container runs)."""
    if not s.workers:
        return "LLMPI_WORKERS is not set: this board serves alone"
    lines = []
    own = own_versions()
    for i, w in enumerate(s.workers):
        try:
            info = wire.describe(i, w)
            b = wire.board_from(w, info)
            lines.append(
                f"{w.name}: answers; {b.arch}, {b.threads} threads, {fit.fmt_bytes(b.budget)} for layers; "
                f"llmpi {info.get('llmpi')}, llama.cpp {info.get('llama_cpp')} (this head: {own['llama_cpp']})"
            )
        except (wire.WorkerUnreachable, ConfigError) as e:
            lines.append(f"{w.name}: {e}")
    return "\n".join(lines)


def server_state(s: Settings) -> str:
    """The server as its /health shows it (no key needed), or the launcher's refusal."""
    refused = failure.refused_reason()
    if refused is not None:
        return f"server: refused to start: {refused}"
    port = s.server_port
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            return f"server: serving on port {port} (/health {resp.status})"
    except urllib.error.HTTPError as e:
        body = e.read(4000).decode(errors="replace")
        if e.code == 503 and '"pulling"' in body:
            return f"server: {healthcheck.pull_line(body)}"
        if e.code == 503 and "loading" in body.lower():
            return "server: loading the model"
        return f"server: /health answers {e.code} {body.strip()[:200]}"
    except OSError as e:
        return f"server: not answering on port {port} ({getattr(e, 'reason', e)})"


def board_snapshot(s: Settings) -> dict[str, Any]:
    """The board watch's latest board.json; where there is none yet, one reading taken now."""
    try:
        snap = json.loads(board.json_path().read_text())
        if isinstance(snap, dict):
            return snap
    except (OSError, ValueError):
        pass
    return board.read_once(s.sysfs)


def status(s: Settings) -> str:
    return "\n".join([server_state(s), *board.describe(board_snapshot(s))])


def models_main(args: argparse.Namespace, s: Settings) -> None:
    if args.action in (None, "list"):
        print(models_cli.models_list(s))
        print(models_cli.disk_line(s))
    elif args.action == "pull":
        print(models_cli.models_pull(s, args.name, sys.stdout, args.progress))
    elif args.action == "rm":
        print(models_cli.models_rm(s, args.name, args.force, sys.stdout))
    else:
        print(models_cli.models_show(s, args.name))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        s = Settings.read(os.environ)
        if args.command == "status":
            print(status(s))
        elif args.command == "models":
            models_main(args, s)
        elif args.command == "cluster":
            print(cluster_secret(s) if args.action == "secret" else cluster_status(s))
        elif args.command == "tls":
            print(tls_ca(s))
        elif args.command == "backup":
            volume_cli.backup_main(s, os.environ, sys.stdout.buffer, args.models, sys.stderr)
        elif args.command == "restore":
            volume_cli.restore_main(s, os.environ, sys.stdin.buffer, sys.stdout)
        else:
            print(keys_cli.keys_main(args, s))
    except ConfigError as e:
        print(f"llmpi: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
