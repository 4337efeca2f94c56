"""The data volume's format: a version in /data/format.json, written at the first start and moved forward by the
launcher, one migration at a time, before anything else reads the volume.

Format 0 is a volume that llmpi 0.1.0 and before wrote (they wrote no version). Format 1 is the same files with
format.json beside them:

    api_key       the generated key (0600)
    keys          named keys, `name key [slots=N] [priority=high] [tokens-day=N] [tokens-hour=N]` a line (0600)
    cluster.key   a head's generated cluster secret (0600)
    tls/          the local CA (ca.crt, ca.key 0600) and the server certificate made from it
    usage.json    the usage ledger per key (llama-server's --usage-file); logs/ the access log
    models/       its own volume: `<stem>.gguf` (+ .mmproj.gguf, .jinja) with a `<stem>.json` manifest each

A volume of a newer format than this image knows is refused (the one failure state), never read: an older llmpi
cannot know what a newer one changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .. import __version__
from ..core.env import ConfigError
from ..core.files import write_atomic

FORMAT = 1  # the format this llmpi writes
FORMAT_FILE = "format.json"
# entries of a new volume that say nothing about who wrote it: the models volume's mount point (the image has the
# directory), huggingface_hub's cache, ext4's lost+found
NOT_CONTENT = frozenset({"models", ".cache", "lost+found"})


@dataclass(frozen=True)
class Migration:
    """One step forward: from format `to - 1` to `to`; `apply` changes the volume's files (none: the step only
    records the format), `what` says it in the log."""

    to: int
    what: str
    apply: Callable[[Path], None]


def nothing_to_change(data_dir: Path) -> None:
    """Format 0 to 1: the files are read as they are; the version is what is new."""


MIGRATIONS = (Migration(1, "the volume's format recorded (format.json); no file changed", nothing_to_change),)


def read_format(data_dir: Path) -> int | None:
    """The volume's format: format.json's; 0 for a volume with files but no format.json (llmpi 0.1.0 and before);
    None for a new, empty volume."""
    path = data_dir / FORMAT_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return 0 if has_content(data_dir) else None
    except (OSError, ValueError) as e:
        raise ConfigError(f"the data volume's {path} is unreadable ({e}); restore a backup (llmpi restore)") from None
    found = data.get("format") if isinstance(data, dict) else None
    if not isinstance(found, int) or isinstance(found, bool) or found < 0:
        raise ConfigError(f"the data volume's {path} holds no format number; restore a backup (llmpi restore)")
    return found


def has_content(data_dir: Path) -> bool:
    try:
        return any(name not in NOT_CONTENT for name in os.listdir(data_dir))
    except FileNotFoundError:
        return False


def write_format(data_dir: Path, found: int) -> None:
    write_atomic(data_dir / FORMAT_FILE, json.dumps({"format": found, "llmpi": __version__}) + "\n")


def newer_refusal(found: int, where: str) -> str:
    return (
        f"{where} was written by a newer llmpi (volume format {found}; this image, llmpi {__version__}, reads "
        f"formats up to {FORMAT}) and is left as it is: run the newer image again, or restore a backup made with "
        "this one (docs/upgrading.md: going back)"
    )


def steps_from(found: int) -> list[Migration]:
    """The migrations that take format `found` to FORMAT, in order."""
    return [m for m in MIGRATIONS if found < m.to <= FORMAT]


def migrate(data_dir: Path, found: int, out: TextIO) -> int:
    """Move a volume of format `found` forward to FORMAT, recording the format after each step (a start stopped
    half-way goes on from the last step done); returns the number of steps."""
    steps = steps_from(found)
    for step in steps:
        step.apply(data_dir)
        write_format(data_dir, step.to)
        print(f"llmpi: data volume format {step.to - 1} -> {step.to}: {step.what}", file=out, flush=True)
    return len(steps)


def prepare_volume(data_dir: Path, out: TextIO) -> None:
    """At every start, before anything reads the volume: a new volume gets the format; an older one is migrated;
    a newer one is refused (ConfigError)."""
    found = read_format(data_dir)
    if found is not None and found > FORMAT:
        raise ConfigError(newer_refusal(found, f"the data volume {data_dir}"))
    try:
        if found is None:
            data_dir.mkdir(parents=True, exist_ok=True)
            write_format(data_dir, FORMAT)
            print(f"llmpi: a new data volume, format {FORMAT}", file=out, flush=True)
        elif found < FORMAT:
            migrate(data_dir, found, out)
    except OSError as e:
        raise ConfigError(
            f"the data volume {data_dir} cannot be written ({e.strerror or e}): mount it writable (it holds the keys)"
        ) from None
