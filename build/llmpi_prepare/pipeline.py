"""The whole pipeline: plan (fit) -> download -> convert -> quantize -> verify -> manifest -> clean up."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import convert, hub, plan
from .hfshape import architecture, shape_from_config

EMBEDDING_ARCH_SUFFIXES = ("Model",)  # BertModel, XLMRobertaModel, NomicBertModel...: encoders, no LM head


def is_embedding(arch: str) -> bool:
    return arch.endswith(EMBEDDING_ARCH_SUFFIXES) and not arch.endswith(("ForCausalLM", "LMHeadModel"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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
    stem = name or f"{repo.split('/')[-1]}.{q}"
    final = out_dir / f"{stem}.gguf"
    final_mmproj = out_dir / f"{stem}.mmproj.gguf" if has_vision else None
    manifest_path = out_dir / f"{stem}.json"
    # the work directory sits on the output's filesystem (renames are atomic) and is named after the commit, so
    # a run that was interrupted picks up its download where it stopped
    work = out_dir / f".prepare-{repo.replace('/', '--')}-{model.revision[:12]}"
    work.mkdir(exist_ok=True)

    need = model.download_bytes + 2 * model.n_params + p.chosen.size
    have = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    free = convert.free_bytes(out_dir)
    if need - have > free:
        raise hub.PrepareError(
            f"not enough disk in {out_dir}: download + f16 intermediate + {q} need about "
            f"{(need - have) / 1e9:.2f} GB more, {free / 1e9:.2f} GB free"
        )
    say(f"downloading {repo}@{model.revision[:12]} ({model.download_bytes / 1e9:.2f} GB)")
    hf_dir = hub.download(model, work / "hf", token)
    say("converting to GGUF (f16)")
    f16 = convert.convert(hf_dir, work / "model.f16.gguf", llama_cpp)
    mmproj = convert.convert(hf_dir, work / "mmproj.f16.gguf", llama_cpp, mmproj=True) if has_vision else None
    if q == "F16":
        quantized = f16
    else:
        say(f"quantizing to {q}")
        quantized = convert.quantize(f16, work / f"model.{q}.gguf", q)
    say("verifying with llama-server")
    check = convert.verify(quantized, mmproj, embedding=embedding)

    os.replace(quantized, final)
    if mmproj is not None and final_mmproj is not None:
        os.replace(mmproj, final_mmproj)
    manifest: dict[str, object] = {
        "source": {"repo": repo, "revision": model.revision},
        "architecture": arch,
        "kind": "embedding" if embedding else "chat",
        "quant": q,
        "file": final.name,
        "sha256": sha256_file(final),
        "size": final.stat().st_size,
        "parameters": model.n_params,
        "trained_context": shape_from_config(model.config, model.n_params).n_ctx_train,
        "mmproj": None
        if final_mmproj is None
        else {"file": final_mmproj.name, "sha256": sha256_file(final_mmproj), "size": final_mmproj.stat().st_size},
        "planned_for": {
            "memory": memory,
            "source": memory_source,
            "context": n_ctx,
            "estimated_memory": p.chosen.needed,
        },
        "verified": check,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(manifest_path, manifest)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    say(f"ready: {final} ({final.stat().st_size / 1e9:.2f} GB, {q}); serve it with LLMPI_MODEL={final}")
    return Result(final, final_mmproj, manifest_path)
