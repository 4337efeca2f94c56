"""`llmpi backup` and `llmpi restore`: what a household cannot make again, as one tar stream.

The archive (a plain tar, written to stdout, read from stdin):

    backup.json          what made it: llmpi's version, the volume's format, the time, whether models are in it
    settings.env         the container's LLMPI_* settings (keys and the cluster secret left out), for reference
    data/api_key, data/keys, data/cluster.key, data/format.json, data/tls/*
    models/<stem>.json   every model's manifest (and its chat template, <stem>.jinja)
    models/<stem>.gguf   the model files themselves, only with `llmpi backup --models`
    backup.end           the last member: the number of members before it, so that a cut-off archive is known

A restore reads the whole archive into a directory of its own on each volume first and checks every member (a
plain file of a known name, a readable key file, a format this image reads); only then does it move the files
into place, so a bad or cut-off archive changes nothing. The keys, the cluster secret and the CA become the
archive's; models on the board that the archive does not name are kept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .. import __version__
from ..core import keys, paths
from ..core.env import ConfigError
from ..core.settings import SETTINGS, check_secret
from . import layout

META = "backup.json"
SETTINGS_FILE = "settings.env"
END = "backup.end"  # the last member: how many came before it (an archive cut off at a member's end lacks it)
CLUSTER_KEY = paths.CLUSTER_KEY_FILE
DATA_FILES = (layout.FORMAT_FILE, keys.KEY_FILE_NAME, keys.NAMED_KEYS_FILE_NAME, CLUSTER_KEY)
SECRET_FILES = frozenset({keys.KEY_FILE_NAME, keys.NAMED_KEYS_FILE_NAME, CLUSTER_KEY, "tls/ca.key", "tls/server.key"})
TLS_DIR = "tls"
# settings whose values are keys: in the backup's files already when the board made them, in the user's .env if not
SECRET_SETTINGS = frozenset({"LLMPI_API_KEY", "LLMPI_ADMIN_KEY", "LLMPI_CLUSTER_SECRET"})
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,200}$")
MODEL_SUFFIXES = (".json", ".jinja", ".gguf")
SMALL_LIMIT = 16 << 20  # any member but a model file: keys, manifests, certificates are kilobytes
STAGING_PREFIX = ".restore-"


@dataclass
class Restored:
    """What a restore put in place, for its report."""

    meta: dict[str, object]
    data: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # manifests whose model file is on the board now
    to_pull: list[str] = field(default_factory=list)  # manifests restored without their file: what pulls it again
    settings: dict[str, str] = field(default_factory=dict)
    migrated: list[str] = field(default_factory=list)  # the volume format's steps forward, as the log says them


# --- backup -----------------------------------------------------------------------------------------------------


def backup_members(data_dir: Path, models_dir: Path, with_models: bool) -> Iterator[tuple[str, Path]]:
    """(name in the archive, file) for everything a backup holds, in a fixed order; links are not followed."""
    for name in DATA_FILES:
        path = data_dir / name
        if path.is_file() and not path.is_symlink():
            yield f"data/{name}", path
    tls = data_dir / TLS_DIR
    if tls.is_dir() and not tls.is_symlink():
        for path in sorted(tls.iterdir()):
            if path.is_file() and not path.is_symlink() and PLAIN_NAME.match(path.name):
                yield f"data/{TLS_DIR}/{path.name}", path
    if not models_dir.is_dir():
        return
    for path in sorted(models_dir.iterdir()):
        if not path.is_file() or path.is_symlink() or not PLAIN_NAME.match(path.name):
            continue
        if path.name.endswith((".json", ".jinja")) or (with_models and path.name.endswith(".gguf")):
            yield f"models/{path.name}", path


def settings_text(env: Mapping[str, str]) -> str:
    """The LLMPI_* settings in effect (as the container's environment has them), keys left out."""
    lines = ["# the settings of the board this backup was made on (keys left out); `llmpi restore` shows them"]
    for name in sorted(SETTINGS):
        if name in env and name not in SECRET_SETTINGS and "\n" not in env[name]:
            lines.append(f"{name}={env[name]}")
    return "\n".join(lines) + "\n"


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o600) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    info.mtime = int(dt.datetime.now(dt.UTC).timestamp())
    tar.addfile(info, io.BytesIO(data))


def write_backup(
    data_dir: Path, models_dir: Path, env: Mapping[str, str], out: IO[bytes], with_models: bool
) -> list[str]:
    """The archive, streamed to `out`; returns the names it holds."""
    found = layout.read_format(data_dir)
    meta = {
        "llmpi": __version__,
        "format": layout.FORMAT if found is None else found,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "models": with_models,
    }
    names = [META, SETTINGS_FILE]
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        add_bytes(tar, META, (json.dumps(meta, indent=2) + "\n").encode(), 0o644)
        add_bytes(tar, SETTINGS_FILE, settings_text(env).encode())
        for name, path in backup_members(data_dir, models_dir, with_models):
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as f:
                tar.addfile(info, f)
            names.append(name)
        add_bytes(tar, END, f"{len(names)}\n".encode(), 0o644)
    return names


# --- restore ----------------------------------------------------------------------------------------------------


def member_place(name: str) -> tuple[str, str]:
    """Which volume a member goes to and its path there: ("data", "keys"), ("models", "x.gguf"), ("meta", ...).
    ConfigError for anything a backup does not hold."""
    if name in (META, SETTINGS_FILE, END):
        return "meta", name
    parts = name.split("/")
    if len(parts) == 2 and parts[0] == "data" and parts[1] in DATA_FILES:
        return "data", parts[1]
    if len(parts) == 3 and parts[:2] == ["data", TLS_DIR] and PLAIN_NAME.match(parts[2]):
        return "data", f"{TLS_DIR}/{parts[2]}"
    if len(parts) == 2 and parts[0] == "models" and PLAIN_NAME.match(parts[1]) and parts[1].endswith(MODEL_SUFFIXES):
        return "models", parts[1]
    if name.startswith("./"):  # deploy-pi's volume-<time>.tar of a release before `llmpi backup`
        raise ConfigError(
            "the archive is a copy of a data volume (scripts/deploy-pi makes one of a release before `llmpi "
            "backup`), not an llmpi backup: put it back as it is, `docker compose exec -T llmpi tar -C /data -xf - "
            "< FILE`, then `docker compose restart llmpi`; nothing restored"
        )
    raise ConfigError(f"the archive holds {ascii(name)[:200]}, which is not part of an llmpi backup: nothing restored")


def copy_member(src: IO[bytes], dest: Path, member: tarfile.TarInfo, limit: int | None) -> None:
    """One member's bytes into `dest`: all of them (an archive cut off inside a member is refused), at most
    `limit`."""
    if limit is not None and member.size > limit:
        raise ConfigError(f"the archive's {member.name} is larger than {limit} bytes: nothing restored")
    copied = 0
    with dest.open("wb") as f:
        while chunk := src.read(1 << 20):
            copied += len(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    if copied != member.size:
        raise ConfigError(f"the archive ends inside {member.name}: it was cut off; nothing restored")


def stage_archive(source: IO[bytes], data_stage: Path, models_stage: Path) -> list[tuple[str, str]]:
    """Read the whole archive into the two staging directories, checking each member; returns (volume, path) of
    every member, in archive order."""
    staged: list[tuple[str, str]] = []
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=source, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                volume, rel = member_place(member.name)
                if not member.isreg():
                    raise ConfigError(f"the archive's {member.name} is not a plain file: nothing restored")
                if member.name in seen:
                    raise ConfigError(f"the archive holds {member.name} twice: nothing restored")
                seen.add(member.name)
                stage = models_stage if volume == "models" else data_stage
                dest = stage / (rel if volume != "meta" else f"meta/{rel}")
                dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                extracted = tar.extractfile(member)
                assert extracted is not None
                copy_member(extracted, dest, member, None if rel.endswith(".gguf") else SMALL_LIMIT)
                staged.append((volume, rel))
    except (tarfile.TarError, EOFError) as e:
        raise ConfigError(f"the archive is not a whole tar stream ({e}): nothing restored") from None
    if not staged or staged[-1] != ("meta", END) or read_end(data_stage) != len(staged) - 1:
        raise ConfigError(f"the archive does not end with {END} as `llmpi backup` writes it: it was cut off (or is "
                          "not an llmpi backup); nothing restored")  # fmt: skip
    return staged


def read_end(data_stage: Path) -> int:
    try:
        return int((data_stage / "meta" / END).read_text().strip())
    except ValueError:
        return -1


def check_staged(data_stage: Path) -> dict[str, object]:
    """The staged archive is an llmpi backup this image can restore: its backup.json, a format not newer than this
    image's, key files that parse. Returns backup.json's contents."""
    try:
        meta = json.loads((data_stage / "meta" / META).read_text())
    except FileNotFoundError:
        raise ConfigError(f"the archive has no {META}: not an llmpi backup (`llmpi backup` makes one)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"the archive's {META} is unreadable ({e}): nothing restored") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if not isinstance(found, int) or isinstance(found, bool):
        raise ConfigError(f"the archive's {META} names no volume format: nothing restored")
    if found > layout.FORMAT:
        raise ConfigError(layout.newer_refusal(found, "this backup") + "; nothing restored")
    if (data_stage / keys.KEY_FILE_NAME).exists():
        keys.parse_keys((data_stage / keys.KEY_FILE_NAME).read_text(), f"the archive's data/{keys.KEY_FILE_NAME}")
    keys.read_named(data_stage)  # ConfigError naming the line
    if (data_stage / CLUSTER_KEY).exists():
        check_secret((data_stage / CLUSTER_KEY).read_text(), f"the archive's data/{CLUSTER_KEY}")
    assert isinstance(meta, dict)
    return meta


def read_settings(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and name in SETTINGS and name not in SECRET_SETTINGS:
                out[name] = value
    return out


def place(stage: Path, rel: str, home: Path) -> None:
    """Move one staged file into its volume: the secrets 0600, the rest 0644; a rename within one file system."""
    src, dest = stage / rel, home / rel
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(src, 0o600 if rel in SECRET_FILES else 0o644)
    os.replace(src, dest)


def manifest_of(path: Path) -> dict[str, Any]:
    """A staged manifest's contents; {} when it is not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_file_of(manifest: dict[str, Any]) -> str | None:
    name = manifest.get("file")
    return name if isinstance(name, str) and PLAIN_NAME.match(name) else None


def pull_hint(manifest: dict[str, Any], stem: str) -> str:
    """What pulls a manifest's model again: `<repo> (llmpi models pull <repo>)`."""
    source = manifest.get("source")
    what = str((source.get("pulled") if isinstance(source, dict) else None) or manifest.get("name") or stem)
    return f"{what} (llmpi models pull {what})"


def move_into_place(staged: list[tuple[str, str]], data_stage: Path, models_stage: Path, s_data: Path,
                    s_models: Path, result: Restored) -> None:  # fmt: skip
    """The data files first (keys, secret, CA), then the model files, then the manifests, so a manifest is never
    in place before its model."""
    for volume, rel in staged:
        if volume == "data":
            place(data_stage, rel, s_data)
            result.data.append(rel)
    for volume, rel in staged:
        if volume == "models" and not rel.endswith(".json"):
            place(models_stage, rel, s_models)
    for volume, rel in staged:
        if volume == "models" and rel.endswith(".json"):
            manifest, stem = manifest_of(models_stage / rel), rel[: -len(".json")]
            file = model_file_of(manifest)
            if file is not None and (s_models / file).is_file():
                result.models.append(stem)
            else:
                result.to_pull.append(pull_hint(manifest, stem))
            place(models_stage, rel, s_models)


def remove_unfinished_restores(data_dir: Path, models_dir: Path) -> list[Path]:
    """The staging directories of a restore that was stopped half-way (the container restarted under it): at a
    start no restore runs, so whatever is there is left over. Returns what was removed."""
    found = [p for d in (data_dir, models_dir) if d.is_dir() for p in d.glob(f"{STAGING_PREFIX}*") if p.is_dir()]
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


def restore_backup(data_dir: Path, models_dir: Path, source: IO[bytes]) -> Restored:
    """Read an archive made by `llmpi backup` from `source` and put it in place (see the module's text); nothing
    changes unless the whole archive is good. An archive of an older format is migrated forward."""
    data_dir.mkdir(parents=True, exist_ok=True)
    models_dir.mkdir(parents=True, exist_ok=True)
    data_stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=data_dir))
    models_stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=models_dir))
    try:
        try:
            staged = stage_archive(source, data_stage, models_stage)
        except OSError as e:  # a full volume, most likely (with --models a backup is gigabytes)
            raise ConfigError(f"cannot write the archive to the volumes: {e.strerror or e}; nothing restored") from None
        meta = check_staged(data_stage)
        result = Restored(meta=meta, settings=read_settings(data_stage / "meta" / SETTINGS_FILE))
        move_into_place(staged, data_stage, models_stage, data_dir, models_dir, result)
        found = meta["format"]
        assert isinstance(found, int)
        layout.write_format(data_dir, found)  # the archive's format, then forward to this image's
        said = io.StringIO()
        layout.migrate(data_dir, found, said)
        result.migrated = said.getvalue().splitlines()
        return result
    finally:
        shutil.rmtree(data_stage, ignore_errors=True)
        shutil.rmtree(models_stage, ignore_errors=True)
