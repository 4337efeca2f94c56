"""Turn LLMPI_* settings and the hardware into llama-server flags, check that the model fits, then exec it.

Run by supervisord as `python3 -m llmpi.launcher`. After the checks, this process *becomes* llama-server
(os.execvpe), so supervisord supervises the server itself and signals reach it directly. Any llama-server
option that has no LLMPI_* setting stays available through its own LLAMA_ARG_* variable, which wins over the
launcher's choice for the same option.

The steps, each on its own: read the settings (`Settings.read`), find a named LLMPI_MODEL on the board or pull it
(`model_on_board`: the one step that may download, behind a status page), look at the model(s) (`load_model`,
`load_embedding_model`, `other_models` in /data/models), the memory budget and the fit (`memory_budget`,
`fit_memory`, `models_max`), the options (`model_options`, `server_options`), the router's preset
(`router_preset`); `plan()` puts them together without touching any file. `main()` then does what has side
effects, in view: the pull, the keys (generated on first start, the server's key file, the router's admin key),
the runtime files (preset, health.json), and the exec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TextIO

from . import announce, board, catalog, cluster, fit, hardware, keys, markers, pull, speculation
from .config import CONFIG_ERROR_EXIT, ConfigError, config_error_marker, runtime_dir, write_atomic
from .gguf import GGUFError, GGUFInfo, read_gguf
from .settings import DRAIN_SECONDS, LOG_LEVELS, Settings
from .statuspage import StatusPage

DEFAULT_MODEL = "/opt/llmpi/models/default.gguf"  # a link to the embedded model, in the `appliance` image
EMBEDDED_MODEL = "/opt/llmpi/models/gemma-3-270m-q4_k_m.gguf"  # the `appliance` image's tiny offline base model
EMBEDDED_NOTE = (
    "this is llmpi's tiny offline test model (Gemma 3 270M, a base model: it does not follow instructions). "
    "For a useful assistant, put LLMPI_MODEL=qwen3-4b-instruct in .env and run `docker compose up -d` "
    "(README: the catalog of names)"
)
WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # the chat page, served by llama-server at /
SERVER = "llama-server"
SECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")  # a model id the router's preset file can hold
# a server that exits this many times without ever answering /health with 200 is not started again: the container
# stays up, unhealthy, with llama-server's last words as the reason (a model it cannot load, an OOM kill)
MAX_START_ATTEMPTS = 3

DRAFT_WITH_WORKERS = (
    "LLMPI_DRAFT_MODEL and LLMPI_WORKERS together are not supported: llama-server would place the draft across the "
    "boards too, and every drafted token would cross the network. Set LLMPI_DRAFT_MODEL=off with several boards"
)

Option = tuple[str, str, str | None]  # (LLAMA_ARG_* variable, flag, value; None for a bare flag)


@dataclass
class Plan:
    """What the launcher decided: the command line, the files to write before the exec, the lines worth logging."""

    argv: list[str]
    notes: list[str] = field(default_factory=list)
    files: dict[Path, str] = field(default_factory=dict)
    announced: list[str] = field(default_factory=list)  # the model ids the network is told about (llmpi.announce)


@dataclass(frozen=True)
class Draft:
    """LLMPI_DRAFT_MODEL: the small model that drafts tokens for the served one (llmpi.speculation)."""

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


class Served(NamedTuple):
    """One model the router serves: its preset section's options, the memory it takes when loaded, its kind."""

    alias: str
    options: list[Option]
    estimate: fit.Estimate
    kind: str  # chat | vision | embedding
    startup: bool  # loaded at start (the default and the embedding model); the others on first request


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
    if not pull.is_path(s.draft_model):
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
        ("LLAMA_ARG_THREADS_BATCH", "--threads-batch", str(threads)),
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
    memory = s.memory(hw)
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


def image_options(s: Settings) -> list[Option]:
    """The image limits (vision models only): tokens per image, pixels and bytes per file."""
    opts: list[Option] = [("LLAMA_ARG_IMAGE_MAX_TOKENS", "--image-max-tokens", str(s.image_max_tokens))]
    if s.image_min_tokens is not None:
        opts.append(("LLAMA_ARG_IMAGE_MIN_TOKENS", "--image-min-tokens", str(s.image_min_tokens)))
    opts.append(("LLAMA_ARG_IMAGE_MAX_PIXELS", "--image-max-pixels", str(s.image_max_pixels)))
    opts.append(("LLAMA_ARG_MEDIA_MAX_BYTES", "--media-max-bytes", str(s.media_max_bytes)))
    return opts


def model_options(s: Settings, model: Model, est: fit.Estimate, threads: int) -> list[Option]:
    """Everything about serving one model: file, slots and their contexts, limits per request, template, media."""
    queue = s.queue_max if s.queue_max is not None else est.n_seq
    opts: list[Option] = [
        ("LLAMA_ARG_MODEL", "--model", str(model.info.path)),
        ("LLAMA_ARG_ALIAS", "--alias", model.alias),
        ("LLAMA_ARG_THREADS", "--threads", str(threads)),
        ("LLAMA_ARG_THREADS_BATCH", "--threads-batch", str(threads)),
        ("LLAMA_ARG_CTX_SIZE", "--ctx-size", str(est.n_ctx)),
        ("LLAMA_ARG_N_PARALLEL", "--parallel", str(est.n_seq)),
        # a KV cache of its own for each slot (ctx-size / parallel tokens): one request can never use up another's
        # context, and attention runs over a slot's own cells only (docs/hardening.md)
        ("LLAMA_ARG_KV_UNIFIED", "--no-kv-unified", None),
        ("LLAMA_ARG_CACHE_RAM", "--cache-ram", str(est.prompt_cache // fit.MiB)),
        ("LLAMA_ARG_MAX_TOKENS", "--max-tokens", str(s.max_tokens)),
        ("LLAMA_ARG_QUEUE_MAX", "--queue-max", str(queue)),
        ("LLAMA_ARG_REMOTE_MEDIA", "--remote-media" if s.remote_media else "--no-remote-media", None),
        ("LLAMA_ARG_DRAIN_TIMEOUT", "--drain-timeout", str(DRAIN_SECONDS)),
    ]
    template_file, template = s.chat_template_file, s.chat_template
    if not template and not template_file:
        sibling = sibling_template(model.info.path)
        template_file = str(sibling) if sibling else ""
    if template_file:
        if not Path(template_file).is_file():
            raise ConfigError(f"the chat template file {template_file} does not exist (LLMPI_CHAT_TEMPLATE_FILE)")
        opts.append(("LLAMA_ARG_CHAT_TEMPLATE_FILE", "--chat-template-file", template_file))
    elif template:
        opts.append(("LLAMA_ARG_CHAT_TEMPLATE", "--chat-template", template))
    if model.mmproj is not None:
        opts.append(("LLAMA_ARG_MMPROJ", "--mmproj", str(model.mmproj)))
        opts.extend(image_options(s))
    if model.embeddings:
        opts.append(("LLAMA_ARG_EMBEDDINGS", "--embeddings", None))
    else:
        opts.extend(speculation_options(s, model))
    return opts


def speculation_options(s: Settings, model: Model) -> list[Option]:
    """Speculative decoding (llmpi.speculation): n-gram drafts from the conversation (LLMPI_SPECULATION) and a draft
    model (LLMPI_DRAFT_MODEL), either, both or none."""
    ngram = s.speculation == "ngram"
    types = speculation.spec_types(ngram, model.draft is not None)
    opts: list[Option] = [("LLAMA_ARG_SPEC_TYPE", "--spec-type", types)] if types else []
    if ngram:  # these flags have no LLAMA_ARG_* variable at the pin: never overridden
        opts += [("", flag, value) for flag, value in speculation.NGRAM_FLAGS]
    if model.draft is not None:
        opts.append(("LLAMA_ARG_SPEC_DRAFT_MODEL", "--spec-draft-model", str(model.draft.path)))
    return opts


def server_options(s: Settings, router: bool) -> list[Option]:
    """The listening server's own options: address, logging, the page, metrics, keys, drain on stop."""
    opts: list[Option] = [
        ("LLAMA_ARG_HOST", "--host", s.host),
        ("LLAMA_ARG_PORT", "--port", str(s.port)),
        ("LLAMA_ARG_LOG_VERBOSITY", "--log-verbosity", str(LOG_LEVELS[s.log_level])),
    ]
    if s.webui and (WEB_DIR / "index.html").is_file():
        opts.append(("LLAMA_ARG_STATIC_PATH", "--path", str(WEB_DIR)))
    if s.metrics:
        opts.append(("LLAMA_ARG_ENDPOINT_METRICS", "--metrics", None))
        opts.append(("LLAMA_ARG_METRICS_TEXTFILE", "--metrics-textfile", str(board.prom_path())))
    if s.auth:
        opts.append(("LLAMA_ARG_API_KEY_FILE", "--api-key-file", str(keys.server_keys_file())))
    if router:
        opts.append(("LLAMA_ARG_DRAIN_TIMEOUT", "--drain-timeout", str(DRAIN_SECONDS)))
        # model management: the key generated for `llmpi models` inside the container, and LLMPI_ADMIN_KEY's
        opts.append(("LLAMA_ARG_ADMIN_KEY_FILE", "--admin-key-file", str(keys.admin_keys_file())))
    return opts


def not_overridden(s: Settings, notes: list[str], opts: list[Option], where: str = "") -> list[Option]:
    """The options whose LLAMA_ARG_* variable the user did not set; a set one wins (llama-server reads it)."""
    kept = []
    for opt in opts:
        env_name, flag, _ = opt
        if env_name in s.llama_args:
            notes.append(f"{env_name}={s.llama_args[env_name]!r} given; not passing {flag}{where}")
        else:
            kept.append(opt)
    return kept


def render_argv(opts: list[Option]) -> list[str]:
    return [arg for _, flag, value in opts for arg in ([flag] if value is None else [flag, value])]


def render_ini(name: str, opts: list[Option], kind: str, startup: bool) -> str:
    """One section of llama-server's --models-preset file (keys are the long flags without dashes)."""
    lines = [f"[{name}]"]
    for _, flag, value in opts:
        if "\n" in (value or "") or "\r" in (value or ""):
            raise ConfigError(f"{flag} for {name}: a value with a line break cannot go into the models preset")
        lines.append(f"{flag.lstrip('-')} = {'true' if value is None else value}")
    lines.append(f"tags = {kind}")
    lines.append(f"load-on-startup = {'true' if startup else 'false'}")
    return "\n".join(lines) + "\n"


def models_max(served: Sequence[Served], budget: int) -> int:
    """How many models may be loaded at once: as many of the largest as fit the budget together (so any that many
    fit), never fewer than those loaded at start. The router unloads the least recently used one beyond that."""
    total, n = fit.ROUTER_OVERHEAD, 0
    for m in sorted(served, key=lambda m: m.estimate.total, reverse=True):
        if total + m.estimate.total > budget:
            break
        total += m.estimate.total
        n += 1
    return max(n, sum(1 for m in served if m.startup), 1)


def router_preset(s: Settings, notes: list[str], served: Sequence[Served], limit: int) -> str:
    """The --models-preset file: one section per model; everything model-specific goes here (the router's own flags
    would override it). `models-max` at the top is read again by the router when the list is reloaded."""
    seen: dict[str, str] = {}
    sections = []
    for m in served:
        if m.alias in seen:
            raise ConfigError(
                f"two models are both called {m.alias!r} ({seen[m.alias]} and {m.kind}): "
                "set LLMPI_MODEL_ALIAS or LLMPI_EMBEDDING_ALIAS, or remove one (llmpi models rm)"
            )
        seen[m.alias] = m.kind
        body = [o for o in m.options if o[0] != "LLAMA_ARG_ALIAS"]
        sections.append(render_ini(m.alias, not_overridden(s, notes, body, f" to {m.alias}"), m.kind, m.startup))
    return f"version = 1\nmodels-max = {limit}\n\n" + "\n".join(sections)


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
    for local in pull.local_models(s.models_dir):
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
    s: Settings, model: Model, budget: int, source: str, boards: Sequence[cluster.Board], amx: bool
) -> tuple[fit.Estimate, cluster.Split]:
    """Slots and context for the memory of all boards together, then the layers per board; the prompt cache (host
    memory on the head) sized from what the head has left after its share."""
    if not boards:
        raise ConfigError("LLMPI_WORKERS is set but no worker has described itself")
    every = cluster.with_head(budget, source, boards)
    pooled = budget + sum(max(0, b.budget - cluster.WORKER_OVERHEAD) for b in boards)
    where = f"{len(boards) + 1} boards together"
    try:
        est = fit_memory(dataclasses.replace(s, prompt_cache=0), model, None, pooled, where, amx=amx)
    except ConfigError as e:
        lines = [f"  {b.name}: {fit.fmt_bytes(b.budget)} ({b.source})" for b in every]
        raise ConfigError(
            f"{e}\nThe boards (a worker's {fit.fmt_bytes(cluster.WORKER_OVERHEAD)} of overhead not counted for "
            "layers):\n" + "\n".join(lines)
        ) from None
    try:
        split = cluster.split_layers(model.shape, est, every)
        if s.prompt_cache != 0:
            left = budget - split.head_fixed - split.layers[0] * split.per_layer
            cache = s.prompt_cache if s.prompt_cache is not None else min(max(0, left), fit.auto_prompt_cache(est))
            cache = cache // fit.MiB * fit.MiB if cache >= fit.MIN_PROMPT_CACHE or s.prompt_cache else 0
            est = dataclasses.replace(est, prompt_cache=cache)
            split = cluster.split_layers(model.shape, est, every)
    except fit.FitError as e:
        raise ConfigError(str(e)) from None
    return est, split


def plan_cluster(
    s: Settings, hw: hardware.Hardware, model: Model, threads: int, boards: Sequence[cluster.Board], notes: list[str]
) -> tuple[list[str], fit.Estimate]:
    """The head of several boards: one model (LLMPI_MODEL) split across them, no router."""
    if model.draft is not None:
        raise ConfigError(DRAFT_WITH_WORKERS)
    budget, source = memory_budget(s, hw)
    est, split = cluster_fit(s, model, budget, source, boards, hw.amx)
    others = [m.name for m in pull.local_models(s.models_dir) if m.path.resolve() != model.info.path.resolve()]
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
    return argv + cluster.server_args(split, len(boards)), est


def tell_announcer(s: Settings, p: Plan, out: TextIO) -> None:
    """What the announce service (llmpi.announce) tells the network, in the directory they share: the model ids,
    whether a key is needed, whether the page is on; never a key. Serving does not depend on it: where the directory
    cannot be written (a `docker run` without it on a read-only root), the log says so and the server starts."""
    state = {"models": p.announced, "auth": s.auth, "webui": s.webui}
    try:
        write_atomic(s.announce_dir / announce.ANNOUNCE_FILE, json.dumps(state))
    except OSError as e:
        print(f"llmpi: the network announcement lists no models: cannot write {s.announce_dir}: {e}", file=out)


def plan(s: Settings, hw: hardware.Hardware, boards: Sequence[cluster.Board] = ()) -> Plan:
    """Every decision, no side effect: the command line and the contents of the runtime files. `boards`: the
    workers' descriptions, when LLMPI_WORKERS is set."""
    notes: list[str] = []
    model = load_model(s)
    threads = s.threads or hw.physical_cores or 1
    health: dict[str, object] = {"models": [], "key_file": str(keys.server_keys_file()) if s.auth else None}
    if s.workers:
        argv, est = plan_cluster(s, hw, model, threads, boards, notes)
        argv += render_argv(not_overridden(s, notes, server_options(s, False)))
        notes.insert(0, f"model {model.info.path.name}: {est.breakdown()} across the boards")
        health_file = {runtime_dir() / "health.json": json.dumps(health)}
        return Plan(argv=argv, notes=notes, files=health_file, announced=[model.alias])
    second = load_embedding_model(s, threads)
    budget, source = memory_budget(s, hw)
    taken = {model.info.path.resolve()} | ({Path(s.embedding_model).resolve()} if second else set())
    taken |= {model.draft.path.resolve()} if model.draft else set()  # it drafts; it is not served by itself
    router = second is not None or any(m.path.resolve() not in taken for m in pull.local_models(s.models_dir))
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
        preset = runtime_dir() / "models.ini"
        files[preset] = router_preset(s, notes, served, limit)
        argv += ["--models-preset", str(preset), "--models-max", str(limit), "--models-default", model.alias]
        health["models"] = [m.alias for m in served if m.startup]
        notes.append(
            f"serving {len(served)} models by name ({', '.join(f'{m.alias} ({m.kind})' for m in served)}); "
            f"at most {limit} loaded at once; a request naming none of them goes to {model.alias}; {preset}"
        )
    argv += render_argv(not_overridden(s, notes, server_options(s, router)))
    files[runtime_dir() / "health.json"] = json.dumps(health)
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


def named_model(s: Settings) -> pull.Ref | None:
    """LLMPI_MODEL as a model to pull (a catalog name, or a hub repo of GGUF files); None when it names a file."""
    if not s.model or pull.is_path(s.model):
        return None
    try:
        return pull.parse_ref(s.model, catalog.load())
    except pull.PullError as e:
        raise ConfigError(f"LLMPI_MODEL: {e}") from None


def serving(s: Settings, local: pull.LocalModel) -> Settings:
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
    data = pull.read_progress()
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
    ref: pull.Ref,
    hw: hardware.Hardware,
    env: Mapping[str, str],
    out: TextIO,
    workers: Sequence[cluster.Board] = (),
    setting: str = "LLMPI_MODEL",
) -> Path:
    """Download what LLMPI_MODEL (or `setting`) names (the quant that fits this board, or with workers the boards
    together) into the models directory, while a status page answers on the server's port. Returns the manifest's
    path."""

    def say(message: str) -> None:
        print(f"llmpi: {message}", file=out, flush=True)

    budget, source = pull_budget(s, hw)
    say(f"{setting}={ref.text}: not in {s.models_dir} yet; pulling it from {ref.repo}")
    page: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    try:
        page = StatusPage(s.host, s.port, WEB_DIR / "index.html", lambda: pull_progress(ref.name))
    except OSError as e:
        say(f"no status page while pulling ({e}); progress is in this log")
    try:
        with page:
            token = pull.token_from_env(env)
            remote = pull.inspect(ref, token)
            p = pull.plan_pull(ref, remote, budget, source, token, cluster.with_head(budget, source, workers))
            say(p.table)
            return pull.download(p, s.models_dir, token, say)
    except pull.PullError as e:
        raise ConfigError(f"{setting}={ref.text}: {e}") from None


def model_on_board(
    s: Settings, hw: hardware.Hardware, env: Mapping[str, str], out: TextIO, workers: Sequence[cluster.Board] = ()
) -> Settings:
    """The settings with a named LLMPI_MODEL resolved to its file in the models directory, pulled first when it is
    not there (the side effect: a download), in the quant that fits this board or, with workers, the boards."""
    ref = named_model(s)
    if ref is None:
        return s
    local = pull.find_local(ref, pull.local_models(s.models_dir))
    if local is None:
        pull_model(s, ref, hw, env, out, workers)
        local = pull.find_local(ref, pull.local_models(s.models_dir))
    if local is None:
        raise ConfigError(f"LLMPI_MODEL={ref.text}: pulled, but no finished model is in {s.models_dir}")
    return serving(s, local)


def served_entry(s: Settings, entries: Mapping[str, catalog.Entry]) -> catalog.Entry | None:
    """The catalog entry of the served model: by its name on the board, else by the repo its manifest came from."""
    if s.model_alias in entries:
        return entries[s.model_alias]
    repo = read_manifest(Path(s.model or DEFAULT_MODEL)).get("source")
    repo_name = str(repo.get("repo", "")).lower() if isinstance(repo, dict) else ""
    return next((e for e in entries.values() if repo_name and e.gguf_repo.lower() == repo_name), None)


def draft_ref(s: Settings) -> pull.Ref | None:
    """LLMPI_DRAFT_MODEL as a model to find on the board or pull: a catalog name or hub repo as given, or for
    `auto` the draft the catalog names for the served model. None for a file or for no draft."""
    if not s.draft_model or pull.is_path(s.draft_model):
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
        return pull.parse_ref(text, entries)
    except pull.PullError as e:
        raise ConfigError(f"LLMPI_DRAFT_MODEL: {e}") from None


def draft_on_board(s: Settings, hw: hardware.Hardware, env: Mapping[str, str], out: TextIO) -> Settings:
    """The settings with a named LLMPI_DRAFT_MODEL (or `auto`'s choice) resolved to its file in the models
    directory, pulled first when it is not there (the side effect: a download)."""
    if s.draft_model and s.workers:
        raise ConfigError(DRAFT_WITH_WORKERS)  # before any download
    ref = draft_ref(s)
    if ref is None:
        return s
    local = pull.find_local(ref, pull.local_models(s.models_dir))
    if local is None:
        pull_model(s, ref, hw, env, out, setting="LLMPI_DRAFT_MODEL")
        local = pull.find_local(ref, pull.local_models(s.models_dir))
    if local is None:
        raise ConfigError(f"LLMPI_DRAFT_MODEL={ref.text}: pulled, but no finished model is in {s.models_dir}")
    return dataclasses.replace(s, draft_model=str(local.path))


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """llama-server's environment: everything but the key settings (the server reads keys from its files) and the
    cluster secret (spiped's)."""
    return {
        k: v for k, v in env.items() if not k.startswith(("LLMPI_API_KEY", "LLMPI_ADMIN_KEY", "LLMPI_CLUSTER_SECRET"))
    }


def apply_keys(s: Settings, out: TextIO) -> keys.Auth:
    """Side effects on keys: a key generated (and stored on the volume) at first start, the server's key files."""
    auth = keys.resolve(s.auth, s.api_keys, s.api_keys_origin, s.data_dir)
    keys.write_admin_keys(s.admin_keys)  # the router's model management (router mode only)
    if not auth.enabled:
        print(
            "llmpi: WARNING: LLMPI_AUTH=off: the API is open to anyone who can reach this port, "
            "with no key. Only do this on a network you fully trust.",
            file=out,
            flush=True,
        )
        return auth
    stored = s.data_dir / keys.KEY_FILE_NAME
    if auth.source == "stored":
        if keys.tighten_mode(stored):
            print(f"llmpi: {stored} was readable by others; its mode is now 0600", file=out, flush=True)
        print(f"llmpi: using the API key stored in {stored} (generated at first start)", file=out, flush=True)
    named = keys.read_named_keys(s.data_dir)
    if named:
        print(f"llmpi: {len(named)} named key(s): {', '.join(named)}", file=out, flush=True)
    keys.write_server_keys(auth, s.data_dir)
    return auth


def write_files(files: Mapping[Path, str]) -> None:
    """The runtime files, each replaced whole (the router may re-read its preset at any time)."""
    for path, text in files.items():
        write_atomic(path, text)


class Prepared(NamedTuple):
    settings: Settings
    plan: Plan
    auth: keys.Auth


def prepare(env: Mapping[str, str], hw: hardware.Hardware, out: TextIO = sys.stdout) -> Prepared:
    """All that main() does before the exec: settings, the workers, the model, plan, keys, runtime files."""
    settings = Settings.read(env)
    if settings.workers_auto and not settings.workers:
        raise ConfigError(
            "LLMPI_WORKERS=auto: no worker announced itself on the network when this container started. Start "
            "each worker (docker compose --profile worker up -d worker), see `docker compose logs announce` on this "
            "board, then: docker compose restart llmpi"
        )
    boards = wait_for_workers(settings, out)  # LLMPI_WORKERS: waits (unhealthy) until each answers
    settings = model_on_board(settings, hw, env, out, boards)  # may download it (a status page answers)
    settings = draft_on_board(settings, hw, env, out)  # LLMPI_DRAFT_MODEL by name: may download it too
    p = plan(settings, hw, boards)
    auth = apply_keys(settings, out)  # may generate the key (on the data volume)
    write_files(p.files)  # the router's preset, health.json
    tell_announcer(settings, p, out)  # /announce/announce.json
    return Prepared(settings, p, auth)


def banner(port: str, data_dir: Path) -> str:
    line = "=" * 78
    return "\n".join(
        [
            line,
            f"llmpi: a new API key was generated and stored in {data_dir / keys.KEY_FILE_NAME} (it is never logged).",
            "       Show it with:   docker compose exec llmpi llmpi keys show",
            "       A key per device: docker compose exec llmpi llmpi keys add <name>",
            f"       base_url:       http://<this machine's address>:{port}/v1",
            line,
        ]
    )


def refuse(reason: str) -> int:
    """The one failure state: the reason in the log and in the marker the health check prints; exit 78 (EX_CONFIG),
    after which supervisord gives up on the program and the container stays up, unhealthy."""
    print(f"llmpi: configuration error: {reason}", file=sys.stderr, flush=True)
    config_error_marker().write_text(reason + "\n")
    return CONFIG_ERROR_EXIT


def failed_starts_refusal() -> str | None:
    """The reason to refuse when llama-server already exited MAX_START_ATTEMPTS times without ever serving (the
    health check clears the count when /health answers 200)."""
    attempts = start_attempts()
    if attempts < MAX_START_ATTEMPTS:
        return None
    try:
        last = Path(markers.last_words_path()).read_text().strip()
    except OSError:
        last = ""
    return (
        f"llama-server stopped {attempts} times before it could serve; not starting it again. "
        + (f"Its last words: {last}" if last else "See the lines above in the log.")
        + " Fix the cause (a model llama.cpp cannot load, too little memory), then `docker compose up -d "
        "--force-recreate`."
    )


def start_attempts() -> int:
    try:
        return int(Path(markers.start_attempts_path()).read_text() or "0")
    except (OSError, ValueError):
        return 0


def count_start_attempt() -> None:
    """One more start of llama-server (called right before the exec: the launcher's own refusals do not count)."""
    Path(markers.start_attempts_path()).write_text(str(start_attempts() + 1))


WORKER_RETRY = 2.0  # seconds between looks at a missing worker
WORKER_LOG_EVERY = 30.0  # seconds between log lines while waiting for the same reason


def describe_workers(s: Settings) -> list[cluster.Board]:
    """Each worker, through its channel: its description, its RPC server's HELLO, the same versions as this head."""
    own = cluster.own_versions()
    boards = []
    for i, w in enumerate(s.workers):
        info = cluster.describe(i, w)
        rpc = cluster.hello(i, w)
        cluster.check_versions(w, info, rpc, own)
        boards.append(cluster.board_from(w, info))
    return boards


def wait_for_workers(s: Settings, out: TextIO) -> list[cluster.Board]:
    """The workers' descriptions, waiting for as long as one does not answer: the reason goes to the log (again
    every 30 s if it changes or persists) and to the health check, which reports unhealthy meanwhile. A worker that
    answers with other versions is a refusal (ConfigError), not a wait."""
    if not s.workers:
        return []
    runtime_dir()
    waiting = Path(markers.waiting_path())
    said, said_at = "", 0.0
    while True:
        try:
            boards = describe_workers(s)
        except cluster.WorkerUnreachable as e:
            reason = f"waiting for worker {e}"
            waiting.write_text(reason + "\n")
            if reason != said or time.monotonic() - said_at >= WORKER_LOG_EVERY:
                print(f"llmpi: {reason}", file=out, flush=True)
                said, said_at = reason, time.monotonic()
            time.sleep(WORKER_RETRY)
            continue
        with contextlib.suppress(FileNotFoundError):
            waiting.unlink()
        if said:
            print("llmpi: every worker answers", file=out, flush=True)
            # llama-server stopped because a worker went away (it aborts on a lost RPC connection), or a worker was
            # late: not a failed start of the model (MAX_START_ATTEMPTS)
            with contextlib.suppress(FileNotFoundError):
                Path(markers.start_attempts_path()).unlink()
        return boards


def main(argv: Sequence[str] | None = None) -> int:
    try:
        if config_error_marker().exists():
            # refused before in this container: final until the cause is fixed and the container recreated or
            # restarted (which clears the runtime directory); never redo a download or a load in a loop
            return refuse(config_error_marker().read_text().strip())
        refusal = failed_starts_refusal()
        if refusal:
            return refuse(refusal)
        env = dict(os.environ)
        hw = hardware.detect()
        settings, p, auth = prepare(env, hw, sys.stdout)
        count_start_attempt()
    except ConfigError as e:
        return refuse(str(e))
    except Exception as e:  # any other failure is a refusal too, never a restart loop
        traceback.print_exc(file=sys.stderr)
        return refuse(f"the launcher failed: {type(e).__name__}: {e}")
    for note in p.notes:
        print(f"llmpi: {note}", flush=True)
    if auth.generated:
        print(banner(settings.host_port, settings.data_dir), flush=True)
    print("llmpi: exec " + " ".join(p.argv), flush=True)
    os.execvpe(p.argv[0], p.argv + list(argv or []), child_env(env))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
