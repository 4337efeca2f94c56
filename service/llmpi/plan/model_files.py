"""The model files on this board: the one LLMPI_MODEL names (checked to be a complete GGUF), its manifest, chat
template and vision projector, and every finished model in the models directory (`<stem>.json` manifests)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.env import ConfigError
from . import fit
from .gguf import GGUFError, GGUFInfo, read_gguf

DEFAULT_MODEL = "/opt/llmpi/models/default.gguf"  # a link to the embedded model, in the `appliance` image
EMBEDDED_MODEL = "/opt/llmpi/models/gemma-3-270m-q4_k_m.gguf"  # the `appliance` image's tiny offline base model


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
        path = model.resolve().with_name(str(entry["file"]))
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


def local_models(models_dir: Path) -> list[LocalModel]:
    """Every finished model in `models_dir`: a `<stem>.json` manifest (pulled, or made by llmpi-prepare) whose
    file is there. Sorted by name."""
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
        path = models_dir / str(data["file"])
        if not path.is_file():
            continue
        name = str(data.get("name") or manifest_path.stem)
        found.append(LocalModel(name, path, manifest_path, data))
    return sorted(found, key=lambda m: m.name)


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
