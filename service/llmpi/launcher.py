"""Turn LLMPI_* settings and the hardware into llama-server flags, check that the model fits, then exec it.

Run by supervisord as `python3 -m llmpi.launcher`. After the checks, this process *becomes* llama-server
(os.execvpe), so supervisord supervises the server itself and signals reach it directly. Any llama-server
option that has no LLMPI_* setting stays available through its own LLAMA_ARG_* variable, which wins over the
launcher's choice for the same option.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TextIO

from . import fit, hardware, keys
from .config import CONFIG_ERROR_EXIT, ConfigError, config_error_marker, get, get_bool, get_int, runtime_dir
from .gguf import GGUFError, GGUFInfo, read_gguf

DEFAULT_PARALLEL = 8  # docs/benchmarks.md: +33% aggregate at 8 clients over 4 slots, single stream unchanged
DEFAULT_EMBEDDING_PARALLEL = 2
# image cost control (vision models only). 256 tokens: a 512 px image on Qwen3-VL (32 px a token), 448 px on
# Qwen2/2.5-VL (28 px), and what Gemma 3 uses for every image. Only dynamic-resolution models obey it.
DEFAULT_IMAGE_MAX_TOKENS = 256
DEFAULT_IMAGE_MAX_PIXELS = 50_000_000  # an 8000 x 6000 phone photo; over that, refused from the header, never decoded
DEFAULT_MEDIA_MAX_BYTES = "20M"  # OpenAI's own per-image limit
C_INT_MAX = 2**31 - 1
DEFAULT_MODEL = "/opt/llmpi/models/default.gguf"  # a link to the embedded model, in the `appliance` image
WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # the chat page, served by llama-server at /
SERVER = "llama-server"
# llama.cpp's verbosity levels; `trace` adds the backend/CPU-variant choice and the model's metadata
LOG_LEVELS = {"error": 1, "warn": 2, "info": 3, "trace": 4, "debug": 5}


@dataclass
class Plan:
    """What the launcher decided: the command line, and the lines worth logging."""

    argv: list[str]
    env: dict[str, str]
    notes: list[str] = field(default_factory=list)
    auth: keys.Auth | None = None


def model_alias(env: Mapping[str, str], model: Path) -> str:
    alias = get(env, "LLMPI_MODEL_ALIAS")
    if alias:
        return alias
    name = model.resolve().name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def sibling_template(model: Path) -> Path | None:
    """`<model>.jinja` next to the model file (links followed): its chat template, when none is configured."""
    real = model.resolve()
    candidate = real.with_name(model_alias({}, real) + ".jinja")
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


def _mmproj(env: Mapping[str, str], model: Path, manifest: dict[str, object]) -> Path | None:
    """LLMPI_MMPROJ, else the projector named by the model's manifest; checked to be a complete GGUF."""
    explicit = get(env, "LLMPI_MMPROJ")
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


Option = tuple[str, str, str | None]  # (LLAMA_ARG_* variable, flag, value; None for a bare flag)


def _image_flags(env: Mapping[str, str]) -> list[Option]:
    """(LLAMA_ARG_* name, flag, value) for the image limits: tokens per image, pixels and bytes per file."""
    max_tokens = get_int(env, "LLMPI_IMAGE_MAX_TOKENS", DEFAULT_IMAGE_MAX_TOKENS)
    min_tokens = get_int(env, "LLMPI_IMAGE_MIN_TOKENS", None)
    if max_tokens is not None and min_tokens is not None and min_tokens > max_tokens:
        raise ConfigError(f"LLMPI_IMAGE_MIN_TOKENS={min_tokens} is more than LLMPI_IMAGE_MAX_TOKENS={max_tokens}")
    max_pixels = get_int(env, "LLMPI_IMAGE_MAX_PIXELS", DEFAULT_IMAGE_MAX_PIXELS)
    raw_bytes = get(env, "LLMPI_MEDIA_MAX_BYTES", DEFAULT_MEDIA_MAX_BYTES)
    try:
        max_bytes = fit.parse_size(raw_bytes)
    except ValueError as e:
        raise ConfigError(f"LLMPI_MEDIA_MAX_BYTES: {e}") from None
    for name, value in (("LLMPI_IMAGE_MAX_PIXELS", max_pixels), ("LLMPI_MEDIA_MAX_BYTES", max_bytes)):
        if value is not None and not 1 <= value <= C_INT_MAX:
            raise ConfigError(f"{name}={value} is out of range (1 to {C_INT_MAX})")
    flags: list[Option] = [("LLAMA_ARG_IMAGE_MAX_TOKENS", "--image-max-tokens", str(max_tokens))]
    if min_tokens is not None:
        flags.append(("LLAMA_ARG_IMAGE_MIN_TOKENS", "--image-min-tokens", str(min_tokens)))
    flags.append(("LLAMA_ARG_IMAGE_MAX_PIXELS", "--image-max-pixels", str(max_pixels)))
    flags.append(("LLAMA_ARG_MEDIA_MAX_BYTES", "--media-max-bytes", str(max_bytes)))
    return flags


def _not_overridden(env: Mapping[str, str], notes: list[str], opts: list[Option], where: str = "") -> list[Option]:
    """The options whose LLAMA_ARG_* variable the user did not set; a set one wins (llama-server reads it)."""
    kept = []
    for opt in opts:
        env_name, flag, _ = opt
        if env.get(env_name, "") != "":
            notes.append(f"{env_name}={env[env_name]!r} given; not passing {flag}{where}")
        else:
            kept.append(opt)
    return kept


def _render_argv(opts: list[Option]) -> list[str]:
    return [arg for _, flag, value in opts for arg in ([flag] if value is None else [flag, value])]


def _render_ini(name: str, opts: list[Option]) -> str:
    """One section of llama-server's --models-preset file (keys are the long flags without dashes)."""
    lines = [f"[{name}]"]
    for _, flag, value in opts:
        if "\n" in (value or "") or "\r" in (value or ""):
            raise ConfigError(f"{flag} for {name}: a value with a line break cannot go into the models preset")
        lines.append(f"{flag.lstrip('-')} = {'true' if value is None else value}")
    lines.append("load-on-startup = true")
    return "\n".join(lines) + "\n"


class SecondModel(NamedTuple):
    alias: str
    options: list[Option]
    estimate: fit.Estimate


def _embedding_model(env: Mapping[str, str], threads: int) -> SecondModel | None:
    """LLMPI_EMBEDDING_MODEL: a second model, for /v1/embeddings, served beside the chat model (router mode)."""
    path = get(env, "LLMPI_EMBEDDING_MODEL")
    if not path:
        return None
    try:
        info = check_model(path)
    except ConfigError as e:
        raise ConfigError(f"LLMPI_EMBEDDING_MODEL: {e}") from None
    shape = fit.ModelShape.from_gguf(info)
    # an embedding model sees each input whole (non-causal): one slot holds its trained context, in one micro-batch
    n_ctx = min(shape.n_ctx_train or fit.MIN_CONTEXT, fit.DEFAULT_CONTEXT_CAP)
    parallel = get_int(env, "LLMPI_EMBEDDING_PARALLEL", DEFAULT_EMBEDDING_PARALLEL) or 1
    est = fit.estimate(shape, n_ctx * parallel, parallel, n_ubatch=n_ctx)
    alias = get(env, "LLMPI_EMBEDDING_ALIAS") or model_alias({}, info.path)
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
    ]
    return SecondModel(alias, opts, est)


def plan(env: Mapping[str, str], hw: hardware.Hardware, out: TextIO = sys.stdout) -> Plan:
    notes: list[str] = []
    model_path = get(env, "LLAMA_ARG_MODEL") or get(env, "LLMPI_MODEL")
    info = check_model(model_path)
    shape = fit.ModelShape.from_gguf(info)
    manifest = read_manifest(info.path)
    mmproj = _mmproj(env, info.path, manifest)
    embeddings = get_bool(env, "LLMPI_EMBEDDINGS", manifest.get("kind") == "embedding")

    threads = get_int(env, "LLMPI_THREADS", hw.physical_cores) or 1
    parallel = get_int(env, "LLMPI_PARALLEL", DEFAULT_PARALLEL)
    requested_ctx = get_int(env, "LLAMA_ARG_CTX_SIZE", None, minimum=0) or get_int(
        env, "LLMPI_CTX_SIZE", None, minimum=fit.MIN_CONTEXT
    )
    limit_text = get(env, "LLMPI_MEMORY_LIMIT")
    reserve_text = get(env, "LLMPI_MEMORY_RESERVE")
    try:
        memory = fit.parse_size(limit_text) if limit_text else hw.memory.total
        reserve = fit.parse_size(reserve_text) if reserve_text else fit.DEFAULT_RESERVE
    except ValueError as e:
        raise ConfigError(f"LLMPI_MEMORY_LIMIT/LLMPI_MEMORY_RESERVE: {e}") from None
    source = "LLMPI_MEMORY_LIMIT" if limit_text else hw.memory.source
    budget = memory - reserve
    second = _embedding_model(env, threads)
    budget_source = f"{fit.fmt_bytes(memory)} {source} minus a reserve of {fit.fmt_bytes(reserve)}"
    projector = mmproj.stat().st_size if mmproj else 0
    extra, extra_label = projector, "projector"
    if second is not None:
        # the embedding model's own llama-server, and the router (a llama-server without a model)
        second_total = second.estimate.total + fit.ROUTER_OVERHEAD
        extra += second_total
        extra_label = ("projector + " if projector else "") + "embedding model and router"
        budget_source += f"; the embedding model and the router take {fit.fmt_bytes(second_total)} of it"
    try:
        est = fit.choose_context(
            shape, budget, requested_ctx, n_seq=parallel or 1, extra=extra, budget_source=budget_source,
            extra_label=extra_label,
        )  # fmt: skip
    except fit.FitError as e:
        raise ConfigError(str(e)) from None

    auth = keys.resolve(env, Path(get(env, "LLMPI_DATA_DIR", "/data")), out=out)

    alias = model_alias(env, info.path)
    model: list[Option] = [
        ("LLAMA_ARG_MODEL", "--model", str(info.path)),
        ("LLAMA_ARG_ALIAS", "--alias", alias),
        ("LLAMA_ARG_THREADS", "--threads", str(threads)),
        ("LLAMA_ARG_THREADS_BATCH", "--threads-batch", str(threads)),
        ("LLAMA_ARG_CTX_SIZE", "--ctx-size", str(est.n_ctx)),
        ("LLAMA_ARG_N_PARALLEL", "--parallel", str(parallel)),
        ("LLAMA_ARG_KV_UNIFIED", "--kv-unified", None),
    ]
    template_file = get(env, "LLMPI_CHAT_TEMPLATE_FILE")
    template = get(env, "LLMPI_CHAT_TEMPLATE")
    if template and template_file:
        raise ConfigError("set LLMPI_CHAT_TEMPLATE or LLMPI_CHAT_TEMPLATE_FILE, not both")
    if not template and not template_file:
        sibling = sibling_template(info.path)
        template_file = str(sibling) if sibling else ""
    if template_file:
        if not Path(template_file).is_file():
            raise ConfigError(f"the chat template file {template_file} does not exist (LLMPI_CHAT_TEMPLATE_FILE)")
        model.append(("LLAMA_ARG_CHAT_TEMPLATE_FILE", "--chat-template-file", template_file))
    elif template:
        model.append(("LLAMA_ARG_CHAT_TEMPLATE", "--chat-template", template))
    if mmproj is not None:
        model.append(("LLAMA_ARG_MMPROJ", "--mmproj", str(mmproj)))
        model.extend(_image_flags(env))
    if embeddings:
        model.append(("LLAMA_ARG_EMBEDDINGS", "--embeddings", None))

    level = get(env, "LLMPI_LOG_LEVEL", "info").lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"LLMPI_LOG_LEVEL={level!r}: use one of {', '.join(LOG_LEVELS)}")
    server: list[Option] = [
        ("LLAMA_ARG_HOST", "--host", get(env, "LLMPI_HOST", "0.0.0.0")),
        ("LLAMA_ARG_PORT", "--port", str(get_int(env, "LLMPI_PORT", 8080))),
        ("LLAMA_ARG_LOG_VERBOSITY", "--log-verbosity", str(LOG_LEVELS[level])),
    ]
    if get_bool(env, "LLMPI_WEBUI", True) and (WEB_DIR / "index.html").is_file():
        server.append(("LLAMA_ARG_STATIC_PATH", "--path", str(WEB_DIR)))
    if get_bool(env, "LLMPI_METRICS", True):
        server.append(("LLAMA_ARG_ENDPOINT_METRICS", "--metrics", None))

    argv = [SERVER]
    health: dict[str, object] = {"models": [], "key_file": str(auth.key_file) if auth.key_file else None}
    if second is None:
        argv += _render_argv(_not_overridden(env, notes, model))
    else:
        # router mode: one llama-server on the port routes by the request's "model" to one child llama-server per
        # model; everything model-specific goes into the preset (the router's own flags would override it)
        if second.alias == alias:
            raise ConfigError(f"the chat and the embedding model are both called {alias!r}: set LLMPI_EMBEDDING_ALIAS")
        chat = [o for o in model if o[0] != "LLAMA_ARG_ALIAS"]
        preset = runtime_dir() / "models.ini"
        preset.write_text(
            "version = 1\n\n"
            + _render_ini(alias, _not_overridden(env, notes, chat, f" to {alias}"))
            + "\n"
            + _render_ini(second.alias, _not_overridden(env, notes, second.options, f" to {second.alias}"))
        )
        argv.extend(["--models-preset", str(preset), "--models-max", "2"])
        health["models"] = [alias, second.alias]
        notes.append(f"serving two models by name: {alias!r} (chat) and {second.alias!r} (embeddings); {preset}")
    argv += _render_argv(_not_overridden(env, notes, server))
    if auth.key_file is not None:
        argv.extend(["--api-key-file", str(auth.key_file)])
    (runtime_dir() / "health.json").write_text(json.dumps(health))

    child_env = {k: v for k, v in env.items() if not k.startswith("LLMPI_API_KEY")}
    notes.insert(
        0,
        (
            f"model {info.path.name}: {shape.architecture}, {shape.n_params / 1e6:.0f}M parameters, "
            f"trained context {shape.n_ctx_train}; memory {est.breakdown()} of {fit.fmt_bytes(budget)} usable "
            f"({fit.fmt_bytes(memory)} {source}, reserve {fit.fmt_bytes(reserve)}); "
            f"{threads} threads ({hw.physical_cores} physical cores, {hw.cpus} CPUs), {parallel} slots"
        ),
    )
    if second is not None:
        notes.insert(1, f"embedding model {second.alias}: {second.estimate.breakdown()}")
    return Plan(argv=argv, env=child_env, notes=notes, auth=auth)


def banner(env: Mapping[str, str], auth: keys.Auth) -> str:
    port = get(env, "LLMPI_HOST_PORT") or get(env, "LLMPI_PORT", "8080")
    key = auth.key_file.read_text().strip() if auth.key_file else ""
    line = "=" * 78
    return "\n".join(
        [
            line,
            "llmpi: a new API key was generated. It is shown this once; it is stored in",
            f"       {auth.key_file} (read it again with: docker compose exec llmpi cat {auth.key_file})",
            "",
            f"       API key:   {key}",
            f"       base_url:  http://<this machine's address>:{port}/v1",
            line,
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    marker = config_error_marker()
    marker.unlink(missing_ok=True)
    env = dict(os.environ)
    try:
        p = plan(env, hardware.detect())
    except ConfigError as e:
        message = f"llmpi: configuration error: {e}"
        print(message, file=sys.stderr, flush=True)
        marker.write_text(str(e) + "\n")
        return CONFIG_ERROR_EXIT
    for note in p.notes:
        print(f"llmpi: {note}", flush=True)
    if p.auth is not None and p.auth.generated:
        print(banner(env, p.auth), flush=True)
    print("llmpi: exec " + " ".join(p.argv), flush=True)
    os.execvpe(p.argv[0], p.argv + list(argv or []), p.env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
