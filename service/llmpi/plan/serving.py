"""The serving plan: every decision the launcher makes, without a side effect. From the settings, the hardware and
the model files it works out the memory fit, the slots, the router's models and the cluster's split, and returns
llama-server's command line with the runtime files to write before the exec (llmpi.process.launcher)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core import paths
from ..core.env import ConfigError
from ..core.keys import server_keys_file
from ..core.settings import DRAIN_SECONDS, Settings
from ..host import hardware
from . import fit, speculation
from .gguf import GGUFError
from .model_files import (
    EMBEDDED_MODEL,
    Draft,
    Model,
    check_model,
    find_mmproj,
    is_path,
    local_models,
    model_alias,
    read_manifest,
)
from .options import (
    SERVER,
    Option,
    Served,
    model_options,
    models_max,
    not_overridden,
    render_argv,
    router_preset,
    server_options,
)
from .split import WORKER_OVERHEAD, Board, Split, server_args, split_layers, with_head

EMBEDDED_NOTE = (
    "this is llmpi's tiny offline test model (Gemma 3 270M, a base model: it does not follow instructions). "
    "For a useful assistant, put LLMPI_MODEL=qwen3-4b-instruct in .env and run `docker compose up -d` "
    "(README: the catalog of names)"
)
SECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")  # a model id the router's preset file can hold
DRAFT_WITH_WORKERS = (
    "LLMPI_DRAFT_MODEL and LLMPI_WORKERS together are not supported: llama-server would place the draft across the "
    "boards too, and every drafted token would cross the network. Set LLMPI_DRAFT_MODEL=off with several boards"
)


@dataclass
class Plan:
    """What the launcher decided: the command line, the files to write before the exec, the lines worth logging."""

    argv: list[str]
    notes: list[str] = field(default_factory=list)
    files: dict[Path, str] = field(default_factory=dict)
    announced: list[str] = field(default_factory=list)  # the model ids the network is told about (llmpi.lan.announce)


def load_model(s: Settings) -> Model:
    info = check_model(s.model)
    manifest = read_manifest(info.path)
    embeddings = s.embeddings if s.embeddings is not None else manifest.get("kind") == "embedding"
    return Model(
        info=info,
        shape=fit.ModelShape.from_gguf(info),
        alias=model_alias(s.model_alias, info.path),
        mmproj=find_mmproj(s.mmproj, info.path, manifest),
        embeddings=embeddings,
        draft=load_draft(s, info.path) if not embeddings else None,
    )


def load_draft(s: Settings, target: Path) -> Draft | None:
    """LLMPI_DRAFT_MODEL as a file (`draft_on_board` has turned a name into one): a complete GGUF whose vocabulary
    is the served model's. llama.cpp cannot draft with another vocabulary, so such a draft is refused here, with
    the difference, rather than left to fail inside llama-server."""
    if not s.draft_model:
        return None
    if not is_path(s.draft_model):
        raise ConfigError(f"LLMPI_DRAFT_MODEL={s.draft_model!r} was not found on this board")
    try:
        info = check_model(s.draft_model)
    except ConfigError as e:
        raise ConfigError(f"LLMPI_DRAFT_MODEL: {e}") from None
    try:
        mismatch = speculation.draft_mismatch(target, info.path)
    except (GGUFError, OSError) as e:
        raise ConfigError(f"LLMPI_DRAFT_MODEL: cannot read the vocabularies: {e}") from None
    if mismatch:
        raise ConfigError(
            f"the draft model {info.path.name} cannot draft for {target.name}: {mismatch}. A draft model must "
            "share the served model's tokenizer (the same family, e.g. Qwen3 0.6B for Qwen3 4B); set "
            "LLMPI_DRAFT_MODEL to such a model, or to off"
        )
    return Draft(info.path, fit.ModelShape.from_gguf(info))


def embedding_served(path: Path, alias: str, parallel: int, threads: int, startup: bool) -> Served:
    """An embedding model's section: each input whole (non-causal), one slot holds its trained context, in one
    micro-batch."""
    info = check_model(str(path))
    shape = fit.ModelShape.from_gguf(info)
    n_ctx = min(shape.n_ctx_train or fit.MIN_CONTEXT, fit.DEFAULT_CONTEXT_CAP)
    est = fit.estimate(shape, n_ctx * parallel, parallel, n_ubatch=n_ctx)
    opts: list[Option] = [
        ("LLAMA_ARG_MODEL", "--model", str(info.path)),
        ("LLAMA_ARG_EMBEDDINGS", "--embeddings", None),
        ("LLAMA_ARG_CTX_SIZE", "--ctx-size", str(n_ctx * parallel)),
        ("LLAMA_ARG_N_PARALLEL", "--parallel", str(parallel)),
        ("LLAMA_ARG_KV_UNIFIED", "--no-kv-unified", None),
        ("LLAMA_ARG_BATCH", "--batch-size", str(n_ctx)),
        ("LLAMA_ARG_UBATCH", "--ubatch-size", str(n_ctx)),
        ("LLAMA_ARG_THREADS", "--threads", str(threads)),
        ("", "--threads-batch", str(threads)),  # no LLAMA_ARG_* variable at b11312: never overridden
        ("LLAMA_ARG_QUEUE_MAX", "--queue-max", str(parallel * 4)),
        ("LLAMA_ARG_DRAIN_TIMEOUT", "--drain-timeout", str(DRAIN_SECONDS)),
    ]
    return Served(model_alias(alias, info.path), opts, est, "embedding", startup)


def load_embedding_model(s: Settings, threads: int) -> Served | None:
    """LLMPI_EMBEDDING_MODEL: a second model, for /v1/embeddings, served beside the chat model (router mode)."""
    if not s.embedding_model:
        return None
    try:
        return embedding_served(Path(s.embedding_model), s.embedding_alias, s.embedding_parallel, threads, True)
    except ConfigError as e:
        raise ConfigError(f"LLMPI_EMBEDDING_MODEL: {e}") from None


def memory_budget(s: Settings, hw: hardware.Hardware) -> tuple[int, str]:
    """Bytes the model(s) may use, and where that number comes from (for notes and refusals)."""
    memory = hardware.planned(hw, s.memory_limit)
    return memory.total - s.memory_reserve, (
        f"{fit.fmt_bytes(memory.total)} {memory.source} minus a reserve of {fit.fmt_bytes(s.memory_reserve)}"
    )


def fit_memory(
    s: Settings,
    model: Model,
    second: Served | None,
    budget: int,
    source: str,
    router: bool = False,
    amx: bool = False,
) -> fit.Estimate:
    """Slots, context per request and prompt cache that fit the budget beside the projector, the draft model (with
    a KV cache of its own for every slot), the embedding model (always loaded) and the router (a llama-server
    without a model) when there is one, and the AMX backend's work memory on a CPU that has AMX."""
    draft = model.draft.shape if model.draft else None
    projector = model.mmproj.stat().st_size if model.mmproj else 0
    extra, label = projector, "projector"
    if amx:
        extra += fit.AMX_WORK
        label = ("projector + " if projector else "") + "AMX work buffers"
    if second is not None or router:
        second_total = (second.estimate.total if second else 0) + fit.ROUTER_OVERHEAD
        extra += second_total
        what = "embedding model and router" if second is not None else "router"
        label = ("projector + " if projector else "") + ("AMX work buffers + " if amx else "") + what
        taker = "the embedding model and the router take" if second is not None else "the router takes"
        source += f"; {taker} {fit.fmt_bytes(second_total)} of it"
    try:
        if s.pool_ctx is not None or s.trained_ctx:
            # LLAMA_ARG_CTX_SIZE sizes the whole pool (0: the model's trained context); the fit covers it too
            pool = s.pool_ctx or model.shape.n_ctx_train or fit.MIN_CONTEXT
            n_seq = s.parallel or fit.MAX_SLOTS
            what = f"LLAMA_ARG_CTX_SIZE={s.pool_ctx or 0}"
            est = fit.fixed_slots(model.shape, budget, pool, n_seq, extra, source, label, what, draft)
        else:
            est = fit.choose_slots(model.shape, budget, s.ctx_size, s.parallel, extra, source, label, draft)
        return fit.with_prompt_cache(est, budget, s.prompt_cache, source)
    except fit.FitError as e:
        raise ConfigError(str(e)) from None


def other_models(
    s: Settings,
    taken: set[Path],
    second: Served | None,
    threads: int,
    budget: int,
    source: str,
    notes: list[str],
    amx: bool = False,
) -> list[Served]:
    """The models in the data volume's models directory (pulled, or made by llmpi-prepare) other than those already
    served: each sized as if it were the only chat model beside the embedding model and the router. One that does
    not fit, or cannot be read, is left out with a note (the rest are still served)."""
    found = []
    plain = dataclasses.replace(
        s, model_alias="", chat_template="", chat_template_file="", mmproj="", embeddings=None, draft_model=""
    )
    for local in local_models(s.models_dir):
        if local.path.resolve() in taken:
            continue
        if not SECTION_NAME.match(local.name) or local.name == "default":
            notes.append(f"not serving {local.path.name}: its name {local.name!r} cannot be a model id")
            continue
        try:
            if local.kind == "embedding":
                found.append(embedding_served(local.path, local.name, s.embedding_parallel, threads, False))
                continue
            info = check_model(str(local.path))
            m = Model(
                info, fit.ModelShape.from_gguf(info), local.name, find_mmproj("", info.path, local.manifest), False
            )
            est = fit_memory(plain, m, second, budget, source, router=True, amx=amx)
            found.append(Served(local.name, model_options(plain, m, est, threads), est, local.kind, False))
        except ConfigError as e:
            notes.append(f"not serving {local.name} ({local.path.name}): {e}")
    return found


def cluster_fit(
    s: Settings, model: Model, budget: int, source: str, boards: Sequence[Board], amx: bool
) -> tuple[fit.Estimate, Split]:
    """Slots and context for the memory of all boards together, then the layers per board; the prompt cache (host
    memory on the head) sized from what the head has left after its share."""
    if not boards:
        raise ConfigError("LLMPI_WORKERS is set but no worker has described itself")
    every = with_head(budget, source, boards)
    pooled = budget + sum(max(0, b.budget - WORKER_OVERHEAD) for b in boards)
    where = f"{len(boards) + 1} boards together"
    try:
        est = fit_memory(dataclasses.replace(s, prompt_cache=0), model, None, pooled, where, amx=amx)
    except ConfigError as e:
        lines = [f"  {b.name}: {fit.fmt_bytes(b.budget)} ({b.source})" for b in every]
        raise ConfigError(
            f"{e}\nThe boards (a worker's {fit.fmt_bytes(WORKER_OVERHEAD)} of overhead not counted for "
            "layers):\n" + "\n".join(lines)
        ) from None
    try:
        split = split_layers(model.shape, est, every)
        if s.prompt_cache != 0:
            left = budget - split.head_fixed - split.layers[0] * split.per_layer
            cache = s.prompt_cache if s.prompt_cache is not None else min(max(0, left), fit.auto_prompt_cache(est))
            cache = cache // fit.MiB * fit.MiB if cache >= fit.MIN_PROMPT_CACHE or s.prompt_cache else 0
            est = dataclasses.replace(est, prompt_cache=cache)
            split = split_layers(model.shape, est, every)
    except fit.FitError as e:
        raise ConfigError(str(e)) from None
    return est, split


def plan_cluster(
    s: Settings, hw: hardware.Hardware, model: Model, threads: int, boards: Sequence[Board], notes: list[str]
) -> tuple[list[str], fit.Estimate]:
    """The head of several boards: one model (LLMPI_MODEL) split across them, no router."""
    if model.draft is not None:
        raise ConfigError(DRAFT_WITH_WORKERS)
    budget, source = memory_budget(s, hw)
    est, split = cluster_fit(s, model, budget, source, boards, hw.amx)
    others = [m.name for m in local_models(s.models_dir) if m.path.resolve() != model.info.path.resolve()]
    if s.embedding_model or others:
        left_out = ([s.embedding_model] if s.embedding_model else []) + others
        notes.append(f"not served while LLMPI_WORKERS is set (one model across the boards): {', '.join(left_out)}")
    notes.append(
        f"cluster of {len(boards) + 1} boards, {model.shape.n_layer} layers of about "
        f"{fit.fmt_bytes(split.per_layer)}:\n" + split.table()
    )
    if split.worker_layers == 0:
        notes.append("the workers have no room for a layer: this board holds them all")
    argv = [SERVER, *render_argv(not_overridden(s, notes, model_options(s, model, est, threads)))]
    return argv + server_args(split, len(boards)), est


def plan(s: Settings, hw: hardware.Hardware, boards: Sequence[Board] = ()) -> Plan:
    """Every decision, no side effect: the command line and the contents of the runtime files. `boards`: the
    workers' descriptions, when LLMPI_WORKERS is set."""
    notes: list[str] = []
    model = load_model(s)
    threads = s.threads or hw.physical_cores or 1
    health: dict[str, object] = {"models": [], "key_file": str(server_keys_file()) if s.auth else None}
    if s.workers:
        argv, est = plan_cluster(s, hw, model, threads, boards, notes)
        argv += render_argv(not_overridden(s, notes, server_options(s, False)))
        notes.insert(0, f"model {model.info.path.name}: {est.breakdown()} across the boards")
        health_file = {Path(paths.runtime_file(paths.HEALTH)): json.dumps(health)}
        return Plan(argv=argv, notes=notes, files=health_file, announced=[model.alias])
    second = load_embedding_model(s, threads)
    budget, source = memory_budget(s, hw)
    taken = {model.info.path.resolve()} | ({Path(s.embedding_model).resolve()} if second else set())
    taken |= {model.draft.path.resolve()} if model.draft else set()  # it drafts; it is not served by itself
    router = second is not None or any(m.path.resolve() not in taken for m in local_models(s.models_dir))
    est = fit_memory(s, model, second, budget, source, router=router, amx=hw.amx)
    opts = model_options(s, model, est, threads)
    argv = [SERVER]
    files: dict[Path, str] = {}
    if not router:
        argv += render_argv(not_overridden(s, notes, opts))
    else:
        kind = "embedding" if model.embeddings else ("vision" if model.mmproj else "chat")
        served = [Served(model.alias, opts, est, kind, True)] + ([second] if second else [])
        served += other_models(s, taken, second, threads, budget, source, notes, hw.amx)
        limit = models_max(served, budget)
        preset = Path(paths.runtime_file(paths.MODELS_PRESET))
        files[preset] = router_preset(s, notes, served, limit)
        argv += ["--models-preset", str(preset), "--models-max", str(limit), "--models-default", model.alias]
        health["models"] = [m.alias for m in served if m.startup]
        notes.append(
            f"serving {len(served)} models by name ({', '.join(f'{m.alias} ({m.kind})' for m in served)}); "
            f"at most {limit} loaded at once; a request naming none of them goes to {model.alias}; {preset}"
        )
    argv += render_argv(not_overridden(s, notes, server_options(s, router)))
    files[Path(paths.runtime_file(paths.HEALTH))] = json.dumps(health)
    shape = model.shape
    notes.insert(
        0,
        (
            f"model {model.info.path.name}: {shape.architecture}, {shape.n_params / 1e6:.0f}M parameters, "
            f"trained context {shape.n_ctx_train}; memory {est.breakdown()} of {fit.fmt_bytes(budget)} usable "
            f"({source}); {threads} threads ({hw.physical_cores} physical cores, {hw.cpus} CPUs), "
            f"{est.n_seq} slots of {est.slot_ctx} tokens, at most {s.max_tokens or 'unlimited'} tokens a reply"
        ),
    )
    if second is not None:
        notes.insert(1, f"embedding model {second.alias}: {second.estimate.breakdown()}")
    if model.info.path.resolve() == Path(EMBEDDED_MODEL).resolve():
        notes.append(EMBEDDED_NOTE)
    return Plan(argv=argv, notes=notes, files=files, announced=[m.alias for m in served] if router else [model.alias])
