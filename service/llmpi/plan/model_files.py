"""The model files on this board: the one LLMPI_MODEL names (checked to be a complete GGUF), its manifest, chat
template and vision projector, and every finished model in the models directory (`<stem>.json` manifests)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.env import ConfigError
from . import fit
from .gguf import GGUFError, GGUFInfo, read_gguf

DEFAULT_MODEL = "/opt/llmpi/models/default.gguf"  # a link to the embedded model, in the `appliance` image
EMBEDDED_MODEL = "/opt/llmpi/models/gemma-3-270m-q4_k_m.gguf"  # the `appliance` image's tiny offline base model
NAME_MAX = 255  # the longest file name (bytes) Linux file systems take


def is_path(text: str) -> bool:
    """LLMPI_MODEL names a file (as before) rather than something to pull."""
    return text.startswith(("/", "./", "../", "~")) or text.lower().endswith(".gguf")


def model_alias(alias: str, model: Path) -> str:
    if alias:
        return alias
    name = model.resolve().name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def sibling_template(model: Path) -> Path | None:
    """`<model>.jinja` next to the model file (links followed): its chat template, when none is configured."""
    real = model.resolve()
    candidate = real.with_name(model_alias("", real) + ".jinja")
    return candidate if candidate.is_file() else None


def read_manifest(model: Path) -> dict[str, object]:
    """The pipeline's manifest next to a model (`<model>.json`, links followed), or {} when there is none."""
    path = model.resolve().with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"the model's manifest {path} is unreadable: {e}") from None
    return data if isinstance(data, dict) else {}


def confined(directory: Path, name: object, what: str) -> Path:
    """A file a manifest names (its `file`, its projector's): a plain file name in `directory` (the manifest's own),
    which a link may not leave. ConfigError otherwise, so no manifest can point at a key elsewhere on the volume,
    for a read or for `llmpi models rm`."""
    text = name if isinstance(name, str) else ""
    if (
        not text
        or text in (".", "..")
        or "/" in text
        or "\\" in text
        or not text.isprintable()
        or len(text.encode()) > NAME_MAX
    ):
        raise ConfigError(f"{what} names the file {ascii(name)[:120]}, not a plain file name in {directory}: refused")
    path = directory / text
    real, home = path.resolve(), directory.resolve()
    if real.parent != home:
        raise ConfigError(f"{what} names {path}, a link that leads out of {directory} (to {real}): refused")
    return path


def check_model(path_text: str) -> GGUFInfo:
    path = Path(path_text or DEFAULT_MODEL)
    if not path_text and not path.exists():
        raise ConfigError("LLMPI_MODEL is not set and this image has no embedded model: name the GGUF file to serve")
    if not path.exists():
        raise ConfigError(f"the model file {path} does not exist (LLMPI_MODEL); is the models volume mounted?")
    if not path.is_file():
        raise ConfigError(f"LLMPI_MODEL={path} is not a file")
    try:
        info = read_gguf(path)
        info.check_complete()
    except GGUFError as e:
        raise ConfigError(f"cannot serve the model: {e}") from None
    except PermissionError:
        raise ConfigError(f"the model file {path} is not readable by the llmpi user (uid {os.getuid()})") from None
    return info


def find_mmproj(explicit: str, model: Path, manifest: dict[str, object]) -> Path | None:
    """LLMPI_MMPROJ, else the projector named by the model's manifest; checked to be a complete GGUF."""
    entry = manifest.get("mmproj")
    if explicit:
        path = Path(explicit)
    elif isinstance(entry, dict) and entry.get("file"):
        real = model.resolve()
        path = confined(real.parent, entry["file"], f"the manifest {real.with_suffix('.json')} (its projector)")
    else:
        return None
    if not path.is_file():
        raise ConfigError(f"the vision projector {path} does not exist" + (" (LLMPI_MMPROJ)" if explicit else ""))
    try:
        read_gguf(path).check_complete()
    except GGUFError as e:
        raise ConfigError(f"cannot use the vision projector: {e}") from None
    return path


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    mmproj: Path | None = None  # its vision projector, in the same directory

    @property
    def kind(self) -> str:
        return manifest_kind(self.manifest)

    @property
    def quant(self) -> str:
        return str(self.manifest.get("quant") or "?")

    @property
    def source(self) -> dict[str, Any]:
        src = self.manifest.get("source")
        return src if isinstance(src, dict) else {}

    @property
    def size(self) -> int:
        mm = self.manifest.get("mmproj")
        extra = mm.get("size", 0) if isinstance(mm, dict) else 0
        return self.path.stat().st_size + int(extra or 0)


def manifest_kind(manifest: Mapping[str, Any]) -> str:
    """chat, vision or embedding, from a manifest (pulled, or llmpi-prepare's): a chat model with a projector sees
    images."""
    kind = str(manifest.get("kind") or "chat")
    mm = manifest.get("mmproj")
    return "vision" if kind == "chat" and isinstance(mm, dict) and mm.get("file") else kind


def local_models(models_dir: Path, refused: Callable[[str], object] | None = None) -> list[LocalModel]:
    """Every finished model in `models_dir`: a `<stem>.json` manifest (pulled, or made by llmpi-prepare) whose
    file is there. Sorted by name. A manifest whose files are not plain file names in `models_dir` (`confined`),
    or whose name is not one line without `/`, `[` or `]`, is left out and its reason given to `refused` (by
    default a line on stderr)."""
    found = []
    if not models_dir.is_dir():
        return []
    for manifest_path in sorted(models_dir.glob("*.json")):
        try:
            data = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not data.get("file"):
            continue
        try:
            path = confined(models_dir, data["file"], f"the manifest {manifest_path}")
            mm = data.get("mmproj")
            mmproj = (
                confined(models_dir, mm["file"], f"the manifest {manifest_path} (its projector)")
                if (isinstance(mm, dict) and mm.get("file"))
                else None
            )
            name = str(data.get("name") or manifest_path.stem)
            if not name.isprintable() or any(c in name for c in "/\\[]"):
                raise ConfigError(f"the manifest {manifest_path} names the model {ascii(name)[:120]}: refused")
        except ConfigError as e:
            (refused or _say)(str(e))
            continue
        if not path.is_file():
            continue
        found.append(LocalModel(name, path, manifest_path, data, mmproj))
    return sorted(found, key=lambda m: m.name)


def _say(line: str) -> None:
    print(f"llmpi: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Draft:
    """LLMPI_DRAFT_MODEL: the small model that drafts tokens for the served one (llmpi.plan.speculation)."""

    path: Path
    shape: fit.ModelShape


@dataclass(frozen=True)
class Model:
    info: GGUFInfo
    shape: fit.ModelShape
    alias: str
    mmproj: Path | None
    embeddings: bool
    draft: Draft | None = None
