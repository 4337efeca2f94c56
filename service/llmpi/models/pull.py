"""Pull a model by name into the models directory: a catalog name or a hub repo of ready GGUF files.

Used by the launcher for `LLMPI_MODEL=<name>` (before llama-server starts), by `llmpi models pull` and by
llmpi-prepare for catalog entries' ready GGUF files. The steps: `choose.parse_ref` (what was named), `hub.inspect`
(the repo's files with their sizes and sha256, from the hub's own metadata), `choose.plan_pull` (the quant that
fits, from the model's shape read by `hub.remote_header`), then `download` here: `fetch` (resumable, by
huggingface_hub; each file sha256-checked and read as a complete GGUF) and `install` (moved into place atomically;
the manifest is written last, so a model without a manifest was never finished).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..core.files import write_atomic
from ..plan import gguf
from ..plan.model_files import LocalModel
from . import catalog, hub
from .choose import PullError, PullPlan, Ref
from .progress import Progress


def work_dir(models_dir: Path, remote: hub.Remote) -> Path:
    """Where a pull keeps its partial files: on the models' filesystem (the final rename is atomic), named after
    the commit, so a pull that was cut off (a restart, a lost connection) continues where it stopped."""
    return models_dir / f".pull-{remote.repo.replace('/', '--')}-{remote.revision[:12]}"


def tree_size(path: Path) -> int:
    """Bytes of the files under `path` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def require_disk(where: Path, need: int, what: str, have_in: Path | None = None) -> None:
    """PullError unless the filesystem of `where` can take `need` bytes, less what `have_in` already holds (the
    part of an interrupted download that is already on disk)."""
    missing = need - (tree_size(have_in) if have_in is not None else 0)
    free = shutil.disk_usage(where).free
    if missing > free:
        raise PullError(
            f"not enough disk for {what} in {where}: {missing / 1e9:.2f} GB more needed, {free / 1e9:.2f} GB free"
        )


def download(
    p: PullPlan,
    models_dir: Path,
    token: str | None,
    say: Callable[[str], object],
    write_progress: bool = True,
    stem: str = "",
    check: Callable[[Sequence[Path]], Mapping[str, object]] | None = None,
) -> Path:
    """Download the plan's files (`fetch`), move them into `models_dir` and write the manifest last (`install`).
    `check`, when given, is called with the fetched files before they are moved (an exception from it leaves them in
    the work directory); what it returns is added to the manifest. Returns the manifest's path."""
    models_dir.mkdir(parents=True, exist_ok=True)
    work = work_dir(models_dir, p.remote)
    require_disk(models_dir, p.total_bytes, p.model_file, have_in=work)
    got = fetch(p, work, token, say, write_progress)
    extra = check(got) if check is not None else None
    manifest_path = install(p, got, models_dir, stem, extra)
    shutil.rmtree(work, ignore_errors=True)
    return manifest_path


def fetch(
    p: PullPlan, work: Path, token: str | None, say: Callable[[str], object], write_progress: bool = True
) -> list[Path]:
    """The plan's files in `work` (the model, then the projector), each downloaded resumably, checked against the
    hub's sha256 and read as a complete GGUF. A file that fails a check deletes `work`: nothing is kept."""
    work.mkdir(parents=True, exist_ok=True)
    got: list[Path] = []
    with Progress(p.ref.name, work, p.total_bytes, say, write_progress) as progress:
        for f in p.files:
            progress.file, progress.sha256, progress.state = f.name, f.sha256 or "", "downloading"
            path = hub.fetch_file(p.remote, f.name, token, work, say)
            progress.state = "verifying"
            progress.done_before += f.size
            if not hub.sha256_matches(path, f):
                shutil.rmtree(work, ignore_errors=True)
                raise PullError(
                    f"{p.remote.repo}/{f.name}: its sha256 does not match the hub's ({(f.sha256 or '')[:16]}...); "
                    "the download was deleted, nothing was kept"
                )
            try:
                gguf.read_gguf(path).check_complete()
            except gguf.GGUFError as e:
                shutil.rmtree(work, ignore_errors=True)
                raise PullError(f"{p.remote.repo}/{f.name} is not a usable GGUF file: {e}") from None
            got.append(path)
        progress.report(log=True)
    return got


def install(
    p: PullPlan,
    got: Sequence[Path],
    models_dir: Path,
    stem: str = "",
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Move the fetched files (`fetch`) into `models_dir` as `<stem>.gguf` and `<stem>.mmproj.gguf` (stem: the
    plan's `<name>.<QUANT>` unless given), with the catalog's chat template for it as `<stem>.jinja` (`template`),
    then write the manifest `<stem>.json`, with `extra` fields. Returns the manifest's path."""
    stem = stem or p.stem
    final = models_dir / f"{stem}.gguf"
    final_mm = models_dir / f"{stem}.mmproj.gguf" if p.mmproj_file else None
    os.replace(got[0], final)
    if final_mm is not None:
        os.replace(got[1], final_mm)
    chat_template = template(p.ref)
    if chat_template is not None:
        write_atomic(models_dir / f"{stem}.jinja", chat_template.read_text())
    model = p.remote.files[p.model_file]
    mm = p.remote.files[p.mmproj_file] if p.mmproj_file else None
    data = manifest(
        name=p.ref.name,
        source={"pulled": p.ref.text, "repo": p.remote.repo, "revision": p.remote.revision, "file": model.name},
        architecture=p.shape.architecture,
        kind=p.kind,
        quant=p.quant,
        model=final,
        mmproj=final_mm,
        parameters=p.shape.n_params,
        trained_context=p.shape.n_ctx_train,
        sha256=model.sha256,
        mmproj_sha256=mm.sha256 if mm else None,
        extra=extra,
    )
    path = models_dir / f"{stem}.json"
    write_manifest(path, data)
    return path


def template(ref: Ref) -> Path | None:
    """The chat template the catalog gives a model (its entry's `template`: tool calls for a model whose GGUF
    template has none; docs/tools.md), or None. Only for the entry's own repo: a hub repo pulled under a name that
    happens to be a catalog name keeps its GGUF's template."""
    entry = catalog.load().get(ref.name)
    if entry is None or entry.gguf_repo.lower() != ref.repo.lower():
        return None
    return entry.template_path()


def manifest(
    *,
    source: Mapping[str, object],
    architecture: str,
    kind: str,
    quant: str,
    model: Path,
    mmproj: Path | None,
    parameters: int,
    trained_context: int,
    name: str = "",
    sha256: str | None = None,
    mmproj_sha256: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """A model's manifest (`<stem>.json` beside it, which llmpi.plan.model_files reads): what it is and where it came
    from. `name` (when given) is the name the board serves it by; the sha256 of each file is the hub's when it lists
    one, else computed from the file."""
    return {
        **({"name": name} if name else {}),
        "source": dict(source),
        "architecture": architecture,
        "kind": kind,
        "quant": quant,
        "file": model.name,
        "sha256": sha256 or hub.sha256_file(model),
        "size": model.stat().st_size,
        "parameters": parameters,
        "trained_context": trained_context,
        "mmproj": None
        if mmproj is None
        else {"file": mmproj.name, "sha256": mmproj_sha256 or hub.sha256_file(mmproj), "size": mmproj.stat().st_size},
        **(extra or {}),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_manifest(path: Path, data: Mapping[str, object]) -> None:
    """The manifest, replaced whole (a reader never sees half of one)."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def find_local(ref: Ref, models: list[LocalModel]) -> LocalModel | None:
    """A model on the board that is what `ref` names: the same repo (and quant, when one was asked for), or a
    model of that name."""
    for m in models:
        same_repo = str(m.source.get("repo", "")).lower() == ref.repo.lower()
        if (same_repo or m.name == ref.name) and ref.quant in ("auto", m.quant):
            return m
    return None
