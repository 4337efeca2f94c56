"""The catalog (service/catalog.toml): models worth running on 4, 8 and 16 GB boards, by name.

`LLMPI_MODEL=<name>` and `llmpi models pull <name>` fetch an entry's ready GGUF files; `llmpi-prepare run <name>`
converts its transformers repo instead (entries that have one). `tools` says whether a chat model calls tools
(OpenAI `tools`/`tool_choice`); `template` names a chat template in service/templates/ that gives it that ability
where the GGUF's own template has no tool-call format: the pull writes it next to the model as `<stem>.jinja`, the
chat template llama-server is given for that model (llmpi.plan.model_files.sibling_template; docs/tools.md).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..core import paths

DEFAULT_CATALOG = Path(paths.SERVICE_DIR) / "catalog.toml"
TEMPLATES_DIR = Path(paths.SERVICE_DIR) / "templates"  # the chat templates an entry's `template` names
KINDS = ("chat", "vision", "embedding")


class CatalogError(ValueError):
    """The catalog file is malformed (a missing field, an unknown kind)."""


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # chat | vision | embedding
    gguf_repo: str  # a hub repo of ready GGUF files
    description: str
    why: str  # why this one: what it is good at, on which boards
    boards: str
    gguf_pattern: str = "*{quant}*.gguf"  # {quant} is replaced; matched case-insensitively
    mmproj: str = ""  # vision: the projector's file in gguf_repo (a pattern)
    quant: str = "auto"  # the quant to pull when none is asked for
    # the transformers repo, for llmpi-prepare's conversion (empty: ready GGUF only)
    repo: str = ""
    revision: str = "main"
    architecture: str = ""
    # a smaller model of the same tokenizer family that drafts tokens for this one (LLMPI_DRAFT_MODEL=auto)
    draft: str = ""
    # whether it calls tools: its own chat template has a tool-call format, or `template` gives it one
    tools: bool = False
    # a chat template in TEMPLATES_DIR (a file name) that a pull writes next to the model as `<stem>.jinja`
    template: str = ""

    def template_path(self) -> Path | None:
        """The chat template file the pull puts next to this model, or None (the GGUF's own template is used)."""
        return TEMPLATES_DIR / self.template if self.template else None


def load(path: Path | None = None) -> dict[str, Entry]:
    p = path or Path(os.environ.get("LLMPI_CATALOG", DEFAULT_CATALOG))
    data = tomllib.loads(p.read_text())
    entries = {}
    for name, fields in data.get("models", {}).items():
        try:
            entry = Entry(name=name, **fields)
        except TypeError as e:
            raise CatalogError(f"{p}: [models.{name!r}]: {e}") from None
        if entry.kind not in KINDS:
            raise CatalogError(f"{p}: [models.{name!r}]: kind {entry.kind!r} is not one of {', '.join(KINDS)}")
        if entry.kind == "embedding" and (entry.tools or entry.template):
            raise CatalogError(f"{p}: [models.{name!r}]: an embedding model has no chat template and calls no tools")
        if entry.template and (Path(entry.template).name != entry.template or not entry.template.endswith(".jinja")):
            raise CatalogError(f"{p}: [models.{name!r}]: template {entry.template!r} is a .jinja file name")
        entries[name] = entry
    return entries
