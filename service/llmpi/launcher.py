"""Turn LLMPI_* settings and the hardware into llama-server flags, check that the model fits, then exec it.

Run by supervisord as `python3 -m llmpi.launcher`. After the checks, this process *becomes* llama-server
(os.execvpe), so supervisord supervises the server itself and signals reach it directly. Any llama-server
option that has no LLMPI_* setting stays available through its own LLAMA_ARG_* variable, which wins over the
launcher's choice for the same option.

The steps, each on its own: read the settings (`Settings.read`), look at the model(s) (`load_model`,
`load_embedding_model`), the memory budget and the fit (`memory_budget`, `fit_memory`), the options
(`model_options`, `server_options`), the router's preset (`router_preset`); `plan()` puts them together without
touching any file. `main()` then does what has side effects, in view: the keys (generated on first start, the
server's key file), the runtime files (preset, health.json), and the exec.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TextIO

from . import fit, hardware, keys, markers
from .config import CONFIG_ERROR_EXIT, ConfigError, config_error_marker, runtime_dir
from .gguf import GGUFError, GGUFInfo, read_gguf
from .settings import DRAIN_SECONDS, LOG_LEVELS, Settings

DEFAULT_MODEL = "/opt/llmpi/models/default.gguf"  # a link to the embedded model, in the `appliance` image
WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # the chat page, served by llama-server at /
SERVER = "llama-server"
# a server that exits this many times without ever answering /health with 200 is not started again: the container
# stays up, unhealthy, with llama-server's last words as the reason (a model it cannot load, an OOM kill)
MAX_START_ATTEMPTS = 3

Option = tuple[str, str, str | None]  # (LLAMA_ARG_* variable, flag, value; None for a bare flag)


@dataclass
class Plan:
    """What the launcher decided: the command line, the files to write before the exec, the lines worth logging."""

    argv: list[str]
    notes: list[str] = field(default_factory=list)
    files: dict[Path, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Model:
    info: GGUFInfo
    shape: fit.ModelShape
    alias: str
    mmproj: Path | None
    embeddings: bool


class SecondModel(NamedTuple):
    alias: str
    options: list[Option]
    estimate: fit.Estimate


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
    )


def load_embedding_model(s: Settings, threads: int) -> SecondModel | None:
    """LLMPI_EMBEDDING_MODEL: a second model, for /v1/embeddings, served beside the chat model (router mode)."""
    if not s.embedding_model:
        return None
    try:
        info = check_model(s.embedding_model)
    except ConfigError as e:
        raise ConfigError(f"LLMPI_EMBEDDING_MODEL: {e}") from None
    shape = fit.ModelShape.from_gguf(info)
    # an embedding model sees each input whole (non-causal): one slot holds its trained context, in one micro-batch
    n_ctx = min(shape.n_ctx_train or fit.MIN_CONTEXT, fit.DEFAULT_CONTEXT_CAP)
    parallel = s.embedding_parallel
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
    return SecondModel(model_alias(s.embedding_alias, info.path), opts, est)


def memory_budget(s: Settings, hw: hardware.Hardware) -> tuple[int, str]:
    """Bytes the model(s) may use, and where that number comes from (for notes and refusals)."""
    memory = s.memory_limit if s.memory_limit is not None else hw.memory.total
    source = "LLMPI_MEMORY_LIMIT" if s.memory_limit is not None else hw.memory.source
    return memory - s.memory_reserve, (
        f"{fit.fmt_bytes(memory)} {source} minus a reserve of {fit.fmt_bytes(s.memory_reserve)}"
    )


def fit_memory(s: Settings, model: Model, second: SecondModel | None, budget: int, source: str) -> fit.Estimate:
    """Slots, context per request and prompt cache that fit the budget beside the projector or second model."""
    projector = model.mmproj.stat().st_size if model.mmproj else 0
    extra, label = projector, "projector"
    if second is not None:
        # the embedding model's own llama-server, and the router (a llama-server without a model)
        second_total = second.estimate.total + fit.ROUTER_OVERHEAD
        extra += second_total
        label = ("projector + " if projector else "") + "embedding model and router"
        source += f"; the embedding model and the router take {fit.fmt_bytes(second_total)} of it"
    try:
        if s.pool_ctx is not None or s.trained_ctx:
            # LLAMA_ARG_CTX_SIZE sizes the whole pool (0: the model's trained context); the fit covers it too
            pool = s.pool_ctx or model.shape.n_ctx_train or fit.MIN_CONTEXT
            n_seq = s.parallel or fit.MAX_SLOTS
            what = f"LLAMA_ARG_CTX_SIZE={s.pool_ctx or 0}"
            est = fit.fixed_slots(model.shape, budget, pool, n_seq, extra, source, label, what)
        else:
            est = fit.choose_slots(model.shape, budget, s.ctx_size, s.parallel, extra, source, label)
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
    if s.auth:
        opts.append(("LLAMA_ARG_API_KEY_FILE", "--api-key-file", str(keys.server_keys_file())))
    if router:
        opts.append(("LLAMA_ARG_DRAIN_TIMEOUT", "--drain-timeout", str(DRAIN_SECONDS)))
        if s.admin_keys is not None:
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


def render_ini(name: str, opts: list[Option]) -> str:
    """One section of llama-server's --models-preset file (keys are the long flags without dashes)."""
    lines = [f"[{name}]"]
    for _, flag, value in opts:
        if "\n" in (value or "") or "\r" in (value or ""):
            raise ConfigError(f"{flag} for {name}: a value with a line break cannot go into the models preset")
        lines.append(f"{flag.lstrip('-')} = {'true' if value is None else value}")
    lines.append("load-on-startup = true")
    return "\n".join(lines) + "\n"


def router_preset(s: Settings, notes: list[str], chat: tuple[str, list[Option]], second: SecondModel) -> str:
    """The --models-preset file: one section per model; everything model-specific goes here (the router's own flags
    would override it)."""
    alias, opts = chat
    if second.alias == alias:
        raise ConfigError(f"the chat and the embedding model are both called {alias!r}: set LLMPI_EMBEDDING_ALIAS")
    body = [o for o in opts if o[0] != "LLAMA_ARG_ALIAS"]
    return (
        "version = 1\n\n"
        + render_ini(alias, not_overridden(s, notes, body, f" to {alias}"))
        + "\n"
        + render_ini(second.alias, not_overridden(s, notes, second.options, f" to {second.alias}"))
    )


def plan(s: Settings, hw: hardware.Hardware) -> Plan:
    """Every decision, no side effect: the command line and the contents of the runtime files."""
    notes: list[str] = []
    model = load_model(s)
    threads = s.threads or hw.physical_cores or 1
    second = load_embedding_model(s, threads)
    budget, source = memory_budget(s, hw)
    est = fit_memory(s, model, second, budget, source)
    opts = model_options(s, model, est, threads)
    argv = [SERVER]
    files: dict[Path, str] = {}
    health: dict[str, object] = {"models": [], "key_file": str(keys.server_keys_file()) if s.auth else None}
    if second is None:
        argv += render_argv(not_overridden(s, notes, opts))
    else:
        preset = runtime_dir() / "models.ini"
        files[preset] = router_preset(s, notes, (model.alias, opts), second)
        argv += ["--models-preset", str(preset), "--models-max", "2"]
        health["models"] = [model.alias, second.alias]
        notes.append(f"serving two models by name: {model.alias!r} (chat) and {second.alias!r} (embeddings); {preset}")
    argv += render_argv(not_overridden(s, notes, server_options(s, second is not None)))
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
    return Plan(argv=argv, notes=notes, files=files)


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """llama-server's environment: everything but the key settings (the server reads keys from its files)."""
    return {k: v for k, v in env.items() if not k.startswith(("LLMPI_API_KEY", "LLMPI_ADMIN_KEY"))}


def apply_keys(s: Settings, out: TextIO) -> keys.Auth:
    """Side effects on keys: a key generated (and stored on the volume) at first start, the server's key files."""
    auth = keys.resolve(s.auth, s.api_keys, s.api_keys_origin, s.data_dir)
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
    if s.admin_keys is not None:
        keys.write_admin_keys(s.admin_keys)
    return auth


def write_files(files: Mapping[Path, str]) -> None:
    for path, text in files.items():
        path.write_text(text)


def prepare(env: Mapping[str, str], hw: hardware.Hardware, out: TextIO = sys.stdout) -> Plan:
    """All that main() does before the exec: settings, plan, keys, runtime files."""
    settings = Settings.read(env)
    p = plan(settings, hw)
    apply_keys(settings, out)
    write_files(p.files)
    return p


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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config_error_marker().unlink(missing_ok=True)
        refusal = failed_starts_refusal()
        if refusal:
            return refuse(refusal)
        env = dict(os.environ)
        settings = Settings.read(env)
        p = plan(settings, hardware.detect())
        auth = apply_keys(settings, sys.stdout)  # may generate the key (on the data volume)
        write_files(p.files)  # the router's preset, health.json
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
