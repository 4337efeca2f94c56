"""`llmpi backup [--models] > file.tar` and `llmpi restore < file.tar` (llmpi.volume.backup), with what a person
reads on the terminal: stderr, as stdout is the archive (backup) or may be piped (restore)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import IO, TextIO

from ..core.env import ConfigError
from ..core.settings import Settings
from ..volume import backup

RESTART = "docker compose restart llmpi"


def backup_main(s: Settings, env: Mapping[str, str], out: IO[bytes], with_models: bool, say: TextIO) -> None:
    if os.isatty(out.fileno()):
        raise ConfigError("the backup is a tar stream: send it to a file (docker compose exec -T llmpi llmpi backup > "
                          "llmpi-backup.tar)")  # fmt: skip
    names = backup.write_backup(s.data_dir, s.models_dir, env, out, with_models)
    out.flush()
    models = [n for n in names if n.startswith("models/") and n.endswith(".json")]
    print(f"llmpi: backed up {len(names) - len(models) - 2} files of the data volume and {len(models)} model "
          f"manifest(s){' with their model files' if with_models else ' (not the model files: --models adds them)'}",
          file=say, flush=True)  # fmt: skip


def restore_report(r: backup.Restored, env: Mapping[str, str]) -> list[str]:
    lines = [f"llmpi: restored a backup of llmpi {r.meta.get('llmpi')} made {r.meta.get('created')}"]
    if r.data:
        lines.append(f"  the data volume: {', '.join(r.data)}")
    if r.models:
        lines.append(f"  models: {', '.join(r.models)}")
    if r.to_pull:
        lines.append(f"  manifests whose model file is not here (pull again): {'; '.join(r.to_pull)}")
    lines += [f"  {line.removeprefix('llmpi: ')}" for line in r.migrated]
    differ = {k: v for k, v in r.settings.items() if env.get(k) != v}
    if differ:
        lines.append("  the backed-up board had these settings, which this one has not (set them in .env to match):")
        lines += [f"    {k}={v}" for k, v in sorted(differ.items())]
    lines.append(f"  the server serves them after a restart: {RESTART}")
    return lines


def restore_main(s: Settings, env: Mapping[str, str], source: IO[bytes], say: TextIO) -> None:
    if os.isatty(source.fileno()):
        raise ConfigError("restore reads the archive on stdin: docker compose exec -T llmpi llmpi restore < "
                          "llmpi-backup.tar")  # fmt: skip
    restored = backup.restore_backup(s.data_dir, s.models_dir, source)
    print("\n".join(restore_report(restored, env)), file=say, flush=True)
