"""The whole pipeline: plan (fit) -> download -> convert -> quantize -> verify -> manifest -> clean up; and, for a
model the pinned converter cannot convert, a catalog entry's ready GGUF files pulled as the appliance pulls them
(llmpi.models.pull), then verified."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmpi.models import catalog, choose, pull
from llmpi.models import hub as hub_client
from llmpi.plan import fit, split

from . import convert, hub, plan
from .hfshape import architecture

EMBEDDING_ARCH_SUFFIXES = ("Model",)  # BertModel, XLMRobertaModel, NomicBertModel...: encoders, no LM head


def is_embedding(arch: str) -> bool:
    return arch.endswith(EMBEDDING_ARCH_SUFFIXES) and not arch.endswith(("ForCausalLM", "LMHeadModel"))


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
    with hub.prepare_errors():
        pull.require_disk(out_dir, need, f"the download, the f16 intermediate and {q}", have_in=work)
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
    peak_disk = pull.tree_size(work)  # download + f16 + quantized: the most the pipeline holds at once
    say("verifying with llama-server")
    check = convert.verify(quantized, mmproj, embedding=embedding)
    step("verify_s")
    say(f"timings {timings}; peak disk {peak_disk / 1e6:.1f} MB")

    os.replace(quantized, final)
    if mmproj is not None and final_mmproj is not None:
        os.replace(mmproj, final_mmproj)
    manifest = pull.manifest(
        source={"repo": repo, "revision": model.revision},
        architecture=arch,
        kind="embedding" if embedding else "chat",
        quant=q,
        model=final,
        mmproj=final_mmproj,
        parameters=model.n_params,
        trained_context=p.shape.n_ctx_train,
        extra={
            "planned_for": planned_for(memory, memory_source, n_ctx, p.chosen.needed),
            "verified": check,
            "pipeline": {**timings, "peak_disk_bytes": peak_disk},
        },
    )
    pull.write_manifest(manifest_path, manifest)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    say(f"ready: {final} ({final.stat().st_size / 1e9:.2f} GB, {q}); serve it with LLMPI_MODEL={final}")
    return Result(final, final_mmproj, manifest_path)


def planned_for(memory: int, source: str, n_ctx: int, needed: int) -> dict[str, object]:
    """The manifest's `planned_for`: the memory and context the fit was made for, and what the model needs."""
    return {"memory": memory, "source": source, "context": n_ctx, "estimated_memory": needed}


def plan_ready(
    entry: catalog.Entry,
    quant: str,
    memory: int,
    memory_source: str,
    token: str | None,
    n_ctx: int = choose.PLAN_CONTEXT,
    workers: Sequence[split.Board] = (),
) -> choose.PullPlan:
    """A catalog entry's ready GGUF files fitted as the appliance's pull fits them (llmpi.models.choose.plan_pull:
    the hub's file sizes, the model's shape from a GGUF header, `auto` as the appliance takes it), for `memory` less
    the reserve or, with workers, across the boards. HubError when nothing (or not `quant`) fits."""
    ref = choose.entry_ref(entry, "" if quant == "auto" else quant)
    budget = memory - fit.DEFAULT_RESERVE
    boards = split.with_head(budget, memory_source, workers)
    remote = hub_client.inspect(ref.repo, ref.revision, token)
    return choose.plan_pull(ref, remote, budget, memory_source, token, boards, n_ctx)


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
    """A ready GGUF (and projector) from the catalog entry's gguf_repo, as the appliance pulls it (`plan_ready`, then
    llmpi.models.pull.download: resumable, each file checked against the hub's sha256 and read as a complete GGUF),
    verified with llama-server before it is moved into `out_dir` with its manifest (`name`, when given, is the
    file's stem and the name it is served by). For models the pinned converter cannot convert."""
    if not entry.gguf_repo:
        raise hub.PrepareError(f"{entry.name} names no repo of ready GGUF files")
    with hub.prepare_errors():
        p = plan_ready(entry, quant, memory, memory_source, token, n_ctx)
        say(p.table)
        stem = (name or p.stem).replace("{quant}", p.quant)
        if name:
            p = dataclasses.replace(p, ref=dataclasses.replace(p.ref, name=stem))

        def verified(got: Sequence[Path]) -> dict[str, object]:
            say("verifying with llama-server")
            check = convert.verify(got[0], got[1] if p.mmproj_file else None, embedding=p.kind == "embedding")
            return {"planned_for": planned_for(memory, memory_source, n_ctx, p.needed), "verified": check}

        manifest_path = pull.download(p, out_dir, token, say, False, stem, verified)
    final = out_dir / f"{stem}.gguf"
    final_mm = out_dir / f"{stem}.mmproj.gguf" if p.mmproj_file else None
    say(f"ready: {final} ({final.stat().st_size / 1e9:.2f} GB, {p.quant}); serve it with LLMPI_MODEL={final}")
    return Result(final, final_mm, manifest_path)
