"""LLMPI_MODEL and LLMPI_DRAFT_MODEL by name: the file on the board that a name stands for, pulled first when it is
not there (the one step of a start that may download), in the quant that fits this board or, with workers, the
boards."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from ..core.env import ConfigError
from ..core.settings import Settings
from ..host import hardware
from ..plan import fit, split
from ..plan.model_files import DEFAULT_MODEL, LocalModel, is_path, local_models, read_manifest
from ..plan.serving import DRAFT_WITH_WORKERS, load_embedding_model, memory_budget
from . import catalog, choose, hub, progress, pull

# opens the page that shows a pull's progress (llmpi.process.statuspage) around a download, given what it shows
StatusPage = Callable[[Callable[[], dict[str, object]]], contextlib.AbstractContextManager[object]]


def named_model(s: Settings) -> choose.Ref | None:
    """LLMPI_MODEL as a model to pull (a catalog name, or a hub repo of GGUF files); None when it names a file."""
    if not s.model or is_path(s.model):
        return None
    try:
        return choose.parse_ref(s.model, catalog.load())
    except choose.PullError as e:
        raise ConfigError(f"LLMPI_MODEL: {e}") from None


def serving(s: Settings, local: LocalModel) -> Settings:
    """The settings with LLMPI_MODEL resolved to a model file on the board (served under its name)."""
    return dataclasses.replace(s, model=str(local.path), model_alias=s.model_alias or local.name)


def pull_budget(s: Settings, hw: hardware.Hardware) -> tuple[int, str]:
    """The memory a pulled model may plan for: the budget, less the embedding model and the router, if any, and
    the AMX backend's work memory on an AMX CPU (as fit_memory counts them), so the quant chosen is one the launcher
    then serves."""
    budget, source = memory_budget(s, hw)
    second = load_embedding_model(s, s.threads or hw.physical_cores or 1)
    if second is not None:
        taken = second.estimate.total + fit.ROUTER_OVERHEAD
        budget -= taken
        source += f", less {fit.fmt_bytes(taken)} for the embedding model and the router"
    if hw.amx:
        budget -= fit.AMX_WORK
        source += f", less {fit.fmt_bytes(fit.AMX_WORK)} of AMX work buffers"
    return budget, source


def pull_progress(name: str) -> dict[str, object]:
    """The pull's progress file, or (before the download starts) that the repo is being looked at."""
    data = progress.read_progress()
    if data is not None:
        return data
    return {
        "model": name,
        "file": "",
        "state": "checking",
        "done_bytes": 0,
        "total_bytes": 0,
        "percent": 0.0,
        "rate_bytes_per_s": None,
        "eta_s": None,
    }


def pull_model(
    s: Settings,
    ref: choose.Ref,
    hw: hardware.Hardware,
    out: TextIO,
    page: StatusPage,
    workers: Sequence[split.Board] = (),
    setting: str = "LLMPI_MODEL",
) -> Path:
    """Download what LLMPI_MODEL (or `setting`) names (the quant that fits this board, or with workers the boards
    together) into the models directory, while `page` shows the progress on the server's port. Returns the
    manifest's path."""

    def say(message: str) -> None:
        print(f"llmpi: {message}", file=out, flush=True)

    budget, source = pull_budget(s, hw)
    say(f"{setting}={ref.text}: not in {s.models_dir} yet; pulling it from {ref.repo}")
    shown: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    try:
        shown = page(lambda: pull_progress(ref.name))
    except OSError as e:
        say(f"no status page while pulling ({e}); progress is in this log")
    try:
        with shown:
            remote = hub.inspect(ref.repo, ref.revision, s.hub_token)
            boards = split.with_head(budget, source, workers)
            p = choose.plan_pull(ref, remote, budget, source, s.hub_token, boards)
            say(p.table)
            return pull.download(p, s.models_dir, s.hub_token, say)
    except hub.HubError as e:
        raise ConfigError(f"{setting}={ref.text}: {e}") from None


def on_board(
    s: Settings,
    ref: choose.Ref,
    setting: str,
    hw: hardware.Hardware,
    out: TextIO,
    page: StatusPage,
    workers: Sequence[split.Board] = (),
) -> LocalModel:
    """The model `ref` names (for `setting`) in the models directory, pulled first when it is not there (the side
    effect: a download), in the quant that fits this board or, with workers, the boards."""
    local = pull.find_local(ref, local_models(s.models_dir))
    if local is None:
        pull_model(s, ref, hw, out, page, workers, setting)
        local = pull.find_local(ref, local_models(s.models_dir))
    if local is None:
        raise ConfigError(f"{setting}={ref.text}: pulled, but no finished model is in {s.models_dir}")
    return local


def model_on_board(
    s: Settings, hw: hardware.Hardware, out: TextIO, page: StatusPage, workers: Sequence[split.Board] = ()
) -> Settings:
    """The settings with a named LLMPI_MODEL resolved to its file in the models directory (`on_board`)."""
    ref = named_model(s)
    if ref is None:
        return s
    return serving(s, on_board(s, ref, "LLMPI_MODEL", hw, out, page, workers))


def served_entry(s: Settings, entries: Mapping[str, catalog.Entry]) -> catalog.Entry | None:
    """The catalog entry of the served model: by its name on the board, else by the repo its manifest came from."""
    if s.model_alias in entries:
        return entries[s.model_alias]
    repo = read_manifest(Path(s.model or DEFAULT_MODEL)).get("source")
    repo_name = str(repo.get("repo", "")).lower() if isinstance(repo, dict) else ""
    return next((e for e in entries.values() if repo_name and e.gguf_repo.lower() == repo_name), None)


def draft_ref(s: Settings) -> choose.Ref | None:
    """LLMPI_DRAFT_MODEL as a model to find on the board or pull: a catalog name or hub repo as given, or for
    `auto` the draft the catalog names for the served model. None for a file or for no draft."""
    if not s.draft_model or is_path(s.draft_model):
        return None
    entries = catalog.load()
    text = s.draft_model
    if text == "auto":
        entry = served_entry(s, entries)
        if entry is None or not entry.draft:
            what = (
                f"the catalog's {entry.name}"
                if entry
                else f"{Path(s.model or DEFAULT_MODEL).name} (not from the catalog)"
            )
            raise ConfigError(
                f"LLMPI_DRAFT_MODEL=auto: no draft model is known for {what}; name one (a file or a catalog name "
                "of the same tokenizer family) or set LLMPI_DRAFT_MODEL=off"
            )
        text = entry.draft
    try:
        return choose.parse_ref(text, entries)
    except choose.PullError as e:
        raise ConfigError(f"LLMPI_DRAFT_MODEL: {e}") from None


def draft_on_board(s: Settings, hw: hardware.Hardware, out: TextIO, page: StatusPage) -> Settings:
    """The settings with a named LLMPI_DRAFT_MODEL (or `auto`'s choice) resolved to its file in the models
    directory (`on_board`)."""
    if s.draft_model and s.workers:
        raise ConfigError(DRAFT_WITH_WORKERS)  # before any download
    ref = draft_ref(s)
    if ref is None:
        return s
    return dataclasses.replace(s, draft_model=str(on_board(s, ref, "LLMPI_DRAFT_MODEL", hw, out, page).path))
