"""Presets (build/catalog.toml): known-good models for 4, 8 and 16 GB boards."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "catalog.toml"


@dataclass(frozen=True)
class Preset:
    name: str
    repo: str
    revision: str
    architecture: str
    description: str = ""
    gguf_repo: str = ""
    gguf_pattern: str = "*{quant}*.gguf"
    mmproj: str = ""
    boards: str = ""


def load(path: Path | None = None) -> dict[str, Preset]:
    p = path or Path(os.environ.get("LLMPI_CATALOG", DEFAULT_CATALOG))
    data = tomllib.loads(p.read_text())
    presets = {}
    for name, fields in data.get("presets", {}).items():
        presets[name] = Preset(name=name, **fields)
    return presets
