"""The whole pipeline: plan (fit) -> download -> convert -> quantize -> verify -> manifest -> clean up."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from llmpi.models import catalog
from llmpi.models.pull import sha256_file, write_json_atomic
from llmpi.plan import fit, quants

from . import convert, hub, plan
from .hfshape import architecture, shape_from_config

EMBEDDING_ARCH_SUFFIXES = ("Model",)  # BertModel, XLMRobertaModel, NomicBertModel...: encoders, no LM head


def is_embedding(arch: str) -> bool:
    return arch.endswith(EMBEDDING_ARCH_SUFFIXES) and not arch.endswith(("ForCausalLM", "LMHeadModel"))


def _manifest(
    *,
    source: dict[str, object],
    architecture: str,
    kind: str,
    quant: str,
    final: Path,
    final_mmproj: Path | None,
    n_params: int,
    n_ctx_train: int,
    planned: dict[str, object],
    verified: dict[str, object],
    extra: dict[str, object] | None = None,
) -> dict[str, object]:
    """What the result is and where it came from; written next to the model as <name>.json."""
    return {
        "source": source,
        "architecture": architecture,
        "kind": kind,
        "quant": quant,
        "file": final.name,
        "sha256": sha256_file(final),
        "size": final.stat().st_size,
        "parameters": n_params,
        "trained_context": n_ctx_train,
        "mmproj": None
        if final_mmproj is None
        else {"file": final_mmproj.name, "sha256": sha256_file(final_mmproj), "size": final_mmproj.stat().st_size},
        "planned_for": planned,
        "verified": verified,
        **(extra or {}),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


@dataclass(frozen=True)
class Result:
    model: Path
    mmproj: Path | None
    manifest: Path


def run(
    repo: str,
    revision: str | None,
    memory: int,
    memory_source: str,
    out_dir: Path,
    quant: str = "auto",
    n_ctx: int = 4096,
    token: str | None = None,
    keep: bool = False,
    name: str | None = None,
    say: Callable[[str], object] = print,
) -> Result:
    llama_cpp = convert.llama_cpp_dir()
    model = hub.inspect(repo, revision, token)
    arch = architecture(model.config)
    has_vision = convert.check_supported(arch, llama_cpp)
    embedding = is_embedding(arch)
    p = plan.make_plan(model, memory, memory_source, n_ctx=n_ctx, quant=quant)
    say(p.report())
    q = p.chosen.quant
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = (name or f"{repo.split('/')[-1]}.{{quant}}").replace("{quant}", q)
    final = out_dir / f"{stem}.gguf"
    final_mmproj = out_dir / f"{stem}.mmproj.gguf" if has_vision else None
    manifest_path = out_dir / f"{stem}.json"
    # the work directory sits on the output's filesystem (renames are atomic) and is named after the commit, so
    # a run that was interrupted picks up its download where it stopped
    work = out_dir / f".prepare-{repo.replace('/', '--')}-{model.revision[:12]}"
    work.mkdir(exist_ok=True)

    need = model.download_bytes + 2 * model.n_params + p.chosen.size
    hub.require_disk(out_dir, need, f"the download, the f16 intermediate and {q}", have_in=work)
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def step(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[name] = round(now - clock, 2)
        clock = now

    say(f"downloading {repo}@{model.revision[:12]} ({model.download_bytes / 1e9:.2f} GB)")
    hf_dir = hub.download(model, work / "hf", token)
    step("download_s")
    say("converting to GGUF (f16)")
    f16 = convert.convert(hf_dir, work / "model.f16.gguf", llama_cpp)
    mmproj = convert.convert(hf_dir, work / "mmproj.f16.gguf", llama_cpp, mmproj=True) if has_vision else None
    step("convert_s")
    if q == "F16":
        quantized = f16
    else:
        say(f"quantizing to {q}")
        quantized = convert.quantize(f16, work / f"model.{q}.gguf", q)
    step("quantize_s")
    peak_disk = hub.tree_size(work)  # download + f16 + quantized: the most the pipeline holds at once
    say("verifying with llama-server")
    check = convert.verify(quantized, mmproj, embedding=embedding)
    step("verify_s")
    say(f"timings {timings}; peak disk {peak_disk / 1e6:.1f} MB")

    os.replace(quantized, final)
    if mmproj is not None and final_mmproj is not None:
        os.replace(mmproj, final_mmproj)
    manifest = _manifest(
        source={"repo": repo, "revision": model.revision},
        architecture=arch,
        kind="embedding" if embedding else "chat",
        quant=q,
        final=final,
        final_mmproj=final_mmproj,
        n_params=model.n_params,
        n_ctx_train=p.shape.n_ctx_train,
        planned={"memory": memory, "source": memory_source, "context": n_ctx, "estimated_memory": p.chosen.needed},
        verified=check,
        extra={"pipeline": {**timings, "peak_disk_bytes": peak_disk}},
    )
    write_json_atomic(manifest_path, manifest)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    say(f"ready: {final} ({final.stat().st_size / 1e9:.2f} GB, {q}); serve it with LLMPI_MODEL={final}")
    return Result(final, final_mmproj, manifest_path)


def _pick(files: dict[str, int], pattern: str, projector: bool = False) -> str | None:
    """The file matching `pattern` (case-insensitive; the shortest name when several do). A model file is never a
    projector: a name with "mmproj" in it only matches when `projector` is asked for."""
    hits = [
        f for f in files if fnmatch(f.lower(), pattern.lower()) and (projector or "mmproj" not in Path(f).name.lower())
    ]
    return min(hits, key=len) if hits else None


def run_prebuilt(
    entry: catalog.Entry,
    memory: int,
    memory_source: str,
    out_dir: Path,
    quant: str = "auto",
    n_ctx: int = 4096,
    token: str | None = None,
    name: str | None = None,
    say: Callable[[str], object] = print,
) -> Result:
    """A ready GGUF (and projector) from the catalog entry's gguf_repo: fitted with the real file sizes from the
    hub, downloaded resumably, verified, with a manifest. For models the pinned converter cannot convert. The fit
    takes the model's shape from its transformers repo's config, so the entry must name one."""
    if not entry.gguf_repo:
        raise hub.PrepareError(f"{entry.name} names no repo of ready GGUF files")
    if not entry.repo:
        raise hub.PrepareError(prebuilt_only(entry.name))
    base = hub.inspect(entry.repo, entry.revision, token)  # the model's shape, for the KV cache and buffers
    api = HfApi(token=token, endpoint=hub.endpoint())
    try:
        info = api.model_info(entry.gguf_repo, files_metadata=True)
    except HfHubHTTPError as e:
        raise hub.explain(e, entry.gguf_repo, None) from None
    files = {s.rfilename: int(s.size or 0) for s in (info.siblings or [])}
    by_quant = {q: f for q in quants.QUANTS if (f := _pick(files, entry.gguf_pattern.replace("{quant}", q)))}
    if not by_quant:
        raise hub.PrepareError(f"{entry.gguf_repo} has no GGUF file matching {entry.gguf_pattern!r}")
    mmproj = ""
    if entry.mmproj:
        mmproj = _pick(files, entry.mmproj, projector=True) or ""
        if not mmproj:
            raise hub.PrepareError(f"{entry.gguf_repo} has no projector matching {entry.mmproj!r}")
    mm_size = files[mmproj] if mmproj else 0
    shape = shape_from_config(base.config, base.n_params)
    budget = memory - fit.DEFAULT_RESERVE
    rows = quants.table_from_sizes(shape, {q: files[f] for q, f in by_quant.items()}, budget, n_ctx, extra=mm_size)
    try:
        chosen = quants.choose(rows, quant)
    except fit.FitError as e:
        raise fit.FitError(
            f"{entry.name} does not fit in {fit.fmt_bytes(memory)} ({memory_source}): {e}\n"
            f"{quants.render(rows, budget)}"
        ) from None
    say(f"{entry.gguf_repo}@{(info.sha or '')[:12]}: ready GGUF files\n" + quants.render(rows, budget, chosen.quant))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or f"{entry.name}.{chosen.quant}"
    final, manifest_path = out_dir / f"{stem}.gguf", out_dir / f"{stem}.json"
    final_mm = out_dir / f"{stem}.mmproj.gguf" if mmproj else None
    work = out_dir / f".prepare-{entry.gguf_repo.replace('/', '--')}-{(info.sha or 'main')[:12]}"
    wanted = [by_quant[chosen.quant]] + ([mmproj] if mmproj else [])
    need = sum(files[f] for f in wanted)
    hub.require_disk(out_dir, need, ", ".join(wanted))
    got: list[Path] = []
    for f in wanted:
        say(f"downloading {f} ({files[f] / 1e9:.2f} GB)")
        try:
            got.append(
                Path(
                    hf_hub_download(
                        entry.gguf_repo, f, revision=info.sha, token=token, local_dir=work, endpoint=hub.endpoint()
                    )
                )
            )
        except HfHubHTTPError as e:
            raise hub.explain(e, entry.gguf_repo, info.sha) from None
    model_file, mm_file = got[0], (got[1] if mmproj else None)
    embedding = entry.kind == "embedding"
    say("verifying with llama-server")
    check = convert.verify(model_file, mm_file, embedding=embedding)
    os.replace(model_file, final)
    if mm_file is not None and final_mm is not None:
        os.replace(mm_file, final_mm)
    write_json_atomic(
        manifest_path,
        _manifest(
            source={
                "repo": entry.gguf_repo,
                "revision": info.sha,
                "file": wanted[0],
                "model_repo": base.repo_id,
                "model_revision": base.revision,
            },
            architecture=entry.architecture,
            kind="embedding" if embedding else "chat",
            quant=chosen.quant,
            final=final,
            final_mmproj=final_mm,
            n_params=base.n_params,
            n_ctx_train=shape.n_ctx_train,
            planned={"memory": memory, "source": memory_source, "context": n_ctx, "estimated_memory": chosen.needed},
            verified=check,
        ),
    )
    shutil.rmtree(work, ignore_errors=True)
    say(f"ready: {final} ({final.stat().st_size / 1e9:.2f} GB, {chosen.quant}); serve it with LLMPI_MODEL={final}")
    return Result(final, final_mm, manifest_path)


def prebuilt_only(name: str) -> str:
    """What to do with a catalog entry that has ready GGUF files and no transformers repo to convert."""
    return (
        f"{name} has only ready GGUF files: pull it with `docker compose exec llmpi llmpi models pull {name}` "
        f"(or LLMPI_MODEL={name})"
    )
