"""What several unit test modules share: a machine, reading a command line and a models preset, pulled models."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmpi.core import units
from llmpi.host import hardware
from llmpi.models import resolve
from tests.ggufmaker import llama_like

HW = hardware.Hardware(cpus=8, physical_cores=4, memory=hardware.Memory(8 * units.GiB, "test RAM"))


def no_page(progress: Callable[[], dict[str, object]]) -> contextlib.nullcontext[None]:
    """No status page: for plans and refusals that never download."""
    return contextlib.nullcontext()


NO_PAGE: resolve.StatusPage = no_page


def flags(argv: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    i = 1
    while i < len(argv):
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[argv[i]] = argv[i + 1]
            i += 2
        else:
            out[argv[i]] = None
            i += 1
    return out


def pulled(models: Path, name: str, quant: str = "Q4_K_M", kind: str = "chat", **shape: Any) -> Path:
    """A model as `llmpi models pull` leaves it: <name>.<quant>.gguf and its manifest."""
    models.mkdir(parents=True, exist_ok=True)
    model = llama_like(models / f"{name}.{quant}.gguf", **shape)
    manifest = {"name": name, "kind": kind, "quant": quant, "file": model.name, "source": {"repo": f"o/{name}-GGUF"}}
    (models / f"{name}.{quant}.json").write_text(json.dumps(manifest))
    return model


def preset_sections(preset: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    head, *blocks = preset.split("\n\n")
    top = dict(line.split(" = ") for line in head.splitlines())
    sections = {
        b.splitlines()[0].strip("[]"): dict(line.split(" = ") for line in b.splitlines()[1:]) for b in blocks if b
    }
    return top, sections
