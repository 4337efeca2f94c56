"""llama-server's options, each with the LLAMA_ARG_* variable that overrides it: for a model, for the listening
server, and rendered as a command line or as the router's --models-preset file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ..core import paths
from ..core.env import ConfigError
from ..core.keys import admin_keys_file, server_keys_file
from ..core.settings import DRAIN_SECONDS, LOG_LEVELS, Settings
from ..tls import certs
from . import fit, speculation
from .model_files import Model, sibling_template

WEB_DIR = Path(paths.SERVICE_DIR) / "web"  # the chat page, served by llama-server at /
# how long a client may take to send the next part of a request (llama-server's own default is an hour, which lets a
# device that trickles requests hold connections open); answers are written under the write timeout, left as it is
READ_TIMEOUT_SECONDS = 10
SERVER = "llama-server"
Option = tuple[str, str, str | None]  # (LLAMA_ARG_* variable, flag, value; None for a bare flag)


class Served(NamedTuple):
    """One model the router serves: its preset section's options, the memory it takes when loaded, its kind."""

    alias: str
    options: list[Option]
    estimate: fit.Estimate
    kind: str  # chat | vision | embedding
    startup: bool  # loaded at start (the default and the embedding model); the others on first request


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
        ("", "--threads-batch", str(threads)),  # no LLAMA_ARG_* variable at b11312: never overridden
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
    """Speculative decoding (llmpi.plan.speculation): n-gram drafts from the conversation (LLMPI_SPECULATION) and a
    draft
    model (LLMPI_DRAFT_MODEL), either, both or none."""
    ngram = s.speculation == "ngram"
    types = speculation.spec_types(ngram, model.draft is not None)
    opts: list[Option] = [("LLAMA_ARG_SPEC_TYPE", "--spec-type", types)] if types else []
    if ngram:  # these flags have no LLAMA_ARG_* variable at b11312: never overridden
        opts += [("", flag, value) for flag, value in speculation.NGRAM_FLAGS]
    if model.draft is not None:
        opts.append(("LLAMA_ARG_SPEC_DRAFT_MODEL", "--spec-draft-model", str(model.draft.path)))
    return opts


def server_options(s: Settings, router: bool) -> list[Option]:
    """The listening server's own options: address, logging, the page, metrics, keys, drain on stop."""
    opts: list[Option] = [
        ("LLAMA_ARG_HOST", "--host", s.http_host),
        ("LLAMA_ARG_PORT", "--port", str(s.port)),
        ("LLAMA_ARG_LOG_VERBOSITY", "--log-verbosity", str(LOG_LEVELS[s.log_level])),
    ]
    if s.webui and (WEB_DIR / "index.html").is_file():
        opts.append(("LLAMA_ARG_STATIC_PATH", "--path", str(WEB_DIR)))
    if s.metrics:
        opts.append(("LLAMA_ARG_ENDPOINT_METRICS", "--metrics", None))
        opts.append(("LLAMA_ARG_METRICS_TEXTFILE", "--metrics-textfile", paths.runtime_file(paths.BOARD_PROM)))
    if s.auth:
        opts.append(("LLAMA_ARG_API_KEY_FILE", "--api-key-file", str(server_keys_file())))
    # the key generated for the container's own processes (`llmpi models`, the Ollama door) and LLMPI_ADMIN_KEY's: the
    # router's model management, and in either mode /slots and the model's path on disk (patch 0020)
    opts.append(("LLAMA_ARG_ADMIN_KEY_FILE", "--admin-key-file", str(admin_keys_file())))
    if router:
        opts.append(("LLAMA_ARG_DRAIN_TIMEOUT", "--drain-timeout", str(DRAIN_SECONDS)))
    if s.tls:  # HTTPS beside HTTP (patch 0025); LLMPI_HTTP=off: plain HTTP on loopback only, for the container's own
        files = certs.served_files(s)
        opts += [
            ("LLAMA_ARG_TLS_PORT", "--tls-port", str(s.tls_port)),
            ("LLAMA_ARG_SSL_CERT_FILE", "--ssl-cert-file", str(files.cert)),
            ("LLAMA_ARG_SSL_KEY_FILE", "--ssl-key-file", str(files.key)),
        ]
        if not s.http:
            opts.append(("LLAMA_ARG_TLS_HOST", "--tls-host", s.host))
    # if a fatal signal kills it anyway, which keys had requests in flight (llmpi.process.crashes reads it)
    opts.append(("LLAMA_ARG_CRASH_RECORD", "--crash-record", paths.runtime_file(paths.CRASH_RECORD)))
    return opts + sharing_options(s) + connection_options(s)


def sharing_options(s: Settings) -> list[Option]:
    """How keys share the slots and what each used (patch 0027): keys take turns (LLMPI_FAIRNESS), the usage ledger
    on the data volume (a router's children share it), and the access log (LLMPI_ACCESS_LOG)."""
    opts: list[Option] = [("LLAMA_ARG_FAIR_KEYS", "--fair-keys", None)] if s.fairness else []
    opts.append(("LLAMA_ARG_USAGE_FILE", "--usage-file", str(s.usage_file)))
    if s.access_log != "off":
        target = "-" if s.access_log == "stdout" else str(s.access_log_file)
        opts.append(("LLAMA_ARG_ACCESS_LOG", "--access-log", target))
    return opts


def connection_options(s: Settings) -> list[Option]:
    """What a device on the network may hold or send (patches 0021, 0022): connections in all and from one address
    (loopback, the container's own processes, not counted), the read timeout, the largest body, and which other web
    origins may call from a browser (never with credentials)."""
    return [
        ("LLAMA_ARG_TIMEOUT_READ", "--timeout-read", str(READ_TIMEOUT_SECONDS)),
        ("LLAMA_ARG_MAX_BODY", "--max-body", str(s.max_body)),
        ("LLAMA_ARG_CONN_MAX", "--conn-max", str(s.max_connections)),
        ("LLAMA_ARG_CONN_MAX_PER_CLIENT", "--conn-max-per-client", str(s.max_connections_per_client)),
        ("LLAMA_ARG_CORS_ORIGINS", "--cors-origins", s.cors_origins),
        ("LLAMA_ARG_CORS_CREDENTIALS", "--no-cors-credentials", None),
    ]


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
