"""Every LLMPI_* setting, read from the environment and validated once, into one typed object.

Every process reads it once, at its start (`Settings.read(os.environ)`), and passes it on; the rest of the package
never reads the environment. The exceptions, each for a reason: the processes that live as long as the container
and cannot afford this module's imports read their one variable themselves (core.paths: LLMPI_RUNTIME_DIR, the
tests' runtime directory; core.env.sysfs_path: LLMPI_SYSFS_PATH for the board watch; process.supervisord:
LLMPI_WORKERS, whether there are channels to prepare); the hub's address is read where huggingface_hub is called
(HF_ENDPOINT), and the catalog's file where the catalog is read (LLMPI_CATALOG, which only tests set), so that
llmpi-prepare, which has no Settings, reads them the same way.

`SETTINGS` lists each variable with its default as the README's settings table shows it; a unit test keeps that
table, this list, compose.yaml and .env.example in step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paths
from .env import OFF_WORDS, ConfigError, file_env, get, get_bool, get_int, sysfs_path
from .units import DEFAULT_RESERVE, MIN_CONTEXT, parse_size

C_INT_MAX = 2**31 - 1
DEFAULT_EMBEDDING_PARALLEL = 2
# a reply of up to ~750 English words; a looping or babbling generation costs at most this many tokens of a slot
# (about 3.5 minutes at 5 tokens/s, a 4B Q4 model on a Pi 5); docs/hardening.md
DEFAULT_MAX_TOKENS = 1024
# image cost control (vision models only). 256 tokens: a 512 px image on Qwen3-VL (32 px a token), 448 px on
# Qwen2/2.5-VL (28 px), and what Gemma 3 uses for every image. Only dynamic-resolution models obey it.
DEFAULT_IMAGE_MAX_TOKENS = 256
DEFAULT_IMAGE_MAX_PIXELS = 50_000_000  # an 8000 x 6000 phone photo; over that, refused from the header, never decoded
DEFAULT_MEDIA_MAX_BYTES = "20M"  # OpenAI's own per-image limit
DEFAULT_TLS_PORT = 8443  # HTTPS for the OpenAI API (LLMPI_TLS_PORT)
OLLAMA_TLS_PORT = 11443  # HTTPS for the Ollama API, in the container
TLS_NAME_RE = re.compile(
    r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$|^[0-9A-Fa-f:.]+$"
)
# connection limits of port 8080, the Ollama door and the status page (docs/security.md)
DEFAULT_MAX_BODY = "32M"  # one image at LLMPI_MEDIA_MAX_BYTES in base64 (26.7 MiB) and the conversation around it
DEFAULT_MAX_CONNECTIONS = 128  # open connections at once, per port
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 16  # open connections at once from one IP address (loopback not counted)
# below supervisord's stopwaitsecs (30 s), itself below compose's stop_grace_period (45 s)
DRAIN_SECONDS = 25
# LLMPI_SPECULATION: ngram = llama-server drafts from the conversation itself (llmpi.plan.speculation); off = never
SPECULATION_MODES = ("ngram", "off")
# off: at 8 concurrent streams n-gram drafts cost 14 % of the throughput on a CPU, whose cores the streams already
# fill (docs/speed.md); one user quoting the prompt gets 1.2-1.4x with ngram
DEFAULT_SPECULATION = "off"
# LLMPI_ANNOUNCE: auto = through the host's avahi-daemon when its D-Bus socket is mounted, else python-zeroconf
ANNOUNCE_MODES = ("auto", "avahi", "zeroconf", "off")
WORKER_PORT = 50052  # LLMPI_WORKERS' default port, published on a worker; PORT + 1 is its description
MIN_SECRET = 32  # characters in a cluster secret; the generated one has 256 bits (43 characters)
DEFAULT_OLLAMA_PORT = 11434  # Ollama's own port, the one every Ollama app fills in (llmpi.ollama)
LOG_LEVELS = {"error": 1, "warn": 2, "info": 3, "trace": 4, "debug": 5}
# LLMPI_ACCESS_LOG: one JSON line per request to a model, in the container log (stdout), in a file on the data
# volume rotated at 10 MiB (file: /data/logs/access.log), or none
ACCESS_LOG_MODES = ("stdout", "file", "off")

# name -> the default as the README table shows it. Settings that only compose reads (ports, image names) are in
# COMPOSE_SETTINGS.
SETTINGS: dict[str, str] = {
    "LLMPI_API_KEY": "generated",
    "LLMPI_API_KEY_FILE": "—",
    "LLMPI_AUTH": "on",
    "LLMPI_ADMIN_KEY": "—",
    "LLMPI_ADMIN_KEY_FILE": "—",
    "LLMPI_MODEL": "embedded Gemma 3 270M",
    "LLMPI_MODEL_ALIAS": "file name",
    "LLMPI_CHAT_TEMPLATE_FILE": "<model>.jinja",
    "LLMPI_CHAT_TEMPLATE": "—",
    "LLMPI_MMPROJ": "from the manifest",
    "LLMPI_EMBEDDINGS": "from the manifest",
    "LLMPI_CTX_SIZE": "auto",
    "LLMPI_THREADS": "auto",
    "LLMPI_PARALLEL": "auto",
    "LLMPI_MAX_TOKENS": str(DEFAULT_MAX_TOKENS),
    "LLMPI_QUEUE_MAX": "auto",
    "LLMPI_FAIRNESS": "on",
    "LLMPI_KEY_MAX_SLOTS": "0",
    "LLMPI_ACCESS_LOG": "stdout",
    "LLMPI_PROMPT_CACHE": "auto",
    "LLMPI_SPECULATION": DEFAULT_SPECULATION,
    "LLMPI_DRAFT_MODEL": "off",
    "LLMPI_MEMORY_LIMIT": "auto",
    "LLMPI_MEMORY_RESERVE": "256M",
    "LLMPI_METRICS": "on",
    "LLMPI_LOG_LEVEL": "info",
    "LLMPI_REMOTE_MEDIA": "off",
    "LLMPI_CORS_ORIGINS": "auto",
    "LLMPI_IMAGE_MAX_TOKENS": str(DEFAULT_IMAGE_MAX_TOKENS),
    "LLMPI_IMAGE_MIN_TOKENS": "model's",
    "LLMPI_IMAGE_MAX_PIXELS": str(DEFAULT_IMAGE_MAX_PIXELS),
    "LLMPI_MEDIA_MAX_BYTES": DEFAULT_MEDIA_MAX_BYTES,
    "LLMPI_MAX_BODY": DEFAULT_MAX_BODY,
    "LLMPI_MAX_CONNECTIONS": str(DEFAULT_MAX_CONNECTIONS),
    "LLMPI_MAX_CONNECTIONS_PER_CLIENT": str(DEFAULT_MAX_CONNECTIONS_PER_CLIENT),
    "LLMPI_EMBEDDING_MODEL": "—",
    "LLMPI_EMBEDDING_ALIAS": "file name",
    "LLMPI_EMBEDDING_PARALLEL": str(DEFAULT_EMBEDDING_PARALLEL),
    "LLMPI_WEBUI": "on",
    "LLMPI_WORKERS": "—",
    "LLMPI_CLUSTER_SECRET": "generated",
    "LLMPI_CLUSTER_SECRET_FILE": "—",
    "LLMPI_ANNOUNCE": "auto",
    "LLMPI_SYSFS_PATH": "/sys",
    "LLMPI_HOST": "0.0.0.0",
    "LLMPI_PORT": "8080",
    "LLMPI_HOST_PORT": "8080",
    "LLMPI_OLLAMA_PORT": str(DEFAULT_OLLAMA_PORT),
    "LLMPI_OLLAMA_HOST_PORT": str(DEFAULT_OLLAMA_PORT),
    "LLMPI_TLS": "auto",
    "LLMPI_TLS_CERT_FILE": "—",
    "LLMPI_TLS_KEY_FILE": "—",
    "LLMPI_TLS_NAMES": "—",
    "LLMPI_TLS_PORT": str(DEFAULT_TLS_PORT),
    "LLMPI_TLS_HOST_PORT": str(DEFAULT_TLS_PORT),
    "LLMPI_OLLAMA_TLS_HOST_PORT": str(OLLAMA_TLS_PORT),
    "LLMPI_HTTP": "on",
}
COMPOSE_SETTINGS = ("LLMPI_BIND_ADDRESS", "LLMPI_IMAGE", "LLMPI_BUILD_CA_BUNDLE", "LLMPI_DEBIAN_IMAGE")
INTERNAL_SETTINGS = ("LLMPI_DATA_DIR", "LLMPI_ANNOUNCE_DIR")  # set by the image or its tests, not by users
# huggingface_hub's own variables, passed on by compose for pulling models by name (README "Models by name")
HUB_VARIABLES = ("HF_TOKEN", "HF_TOKEN_FILE", "HF_ENDPOINT")


ORIGIN_RE = re.compile(r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$")  # scheme://host[:port]


def cors_origins(env: Mapping[str, str], auth: bool) -> str:
    """LLMPI_CORS_ORIGINS: which other web origins' pages may call the API from a browser. `auto`: any origin with a
    key (never with cookies or other credentials), none when LLMPI_AUTH=off (then only the chat page, which is the
    server's own origin and needs no grant, so that a web page the household visits cannot drive an open server);
    or a comma-separated list of origins such as `http://homeassistant.local:8123`."""
    raw = get(env, "LLMPI_CORS_ORIGINS").strip()
    if raw in ("", "auto"):
        return "*" if auth else ""
    if raw == "*":
        return "*"
    origins = [o.strip().rstrip("/") for o in raw.split(",") if o.strip()]
    for origin in origins:
        if not ORIGIN_RE.match(origin):
            raise ConfigError(
                f"LLMPI_CORS_ORIGINS: {origin!r} is not an origin: use scheme://host[:port] "
                "(e.g. http://homeassistant.local:8123), comma-separated, or * or auto"
            )
    return ",".join(origins)


@dataclass(frozen=True)
class Worker:
    """One board of LLMPI_WORKERS."""

    host: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """What the user asked for; `None` means "auto" / not set, decided later from the model and the hardware."""

    model: str  # a path; "" = the embedded model
    model_alias: str
    chat_template: str
    chat_template_file: str
    mmproj: str
    embeddings: bool | None
    api_keys: str | None  # LLMPI_API_KEY or the contents of LLMPI_API_KEY_FILE
    api_keys_origin: str
    auth: bool
    admin_keys: str | None
    ctx_size: int | None  # tokens per request (slot)
    trained_ctx: bool  # LLAMA_ARG_CTX_SIZE=0: the model's trained context for the whole pool
    pool_ctx: int | None  # LLAMA_ARG_CTX_SIZE=N: the user sized the pool itself
    threads: int | None
    parallel: int | None
    max_tokens: int  # 0 = no cap
    queue_max: int | None  # None = auto (as many as slots); 0 = unbounded
    fairness: bool  # LLMPI_FAIRNESS: keys take turns for free slots (patch 0027's --fair-keys)
    key_max_slots: int  # LLMPI_KEY_MAX_SLOTS: most slots one key holds at once where its own share sets none; 0 = all
    access_log: str  # LLMPI_ACCESS_LOG: one of ACCESS_LOG_MODES
    prompt_cache: int | None  # bytes; None = auto
    speculation: str  # LLMPI_SPECULATION: one of SPECULATION_MODES
    draft_model: str  # LLMPI_DRAFT_MODEL: "" = none, "auto" = the catalog's draft for the model, a path or a name
    memory_limit: int | None
    memory_reserve: int
    metrics: bool
    log_level: str
    remote_media: bool
    cors_origins: str  # LLMPI_CORS_ORIGINS resolved: "*", or a comma-separated list of origins ("" = none)
    image_max_tokens: int
    image_min_tokens: int | None
    image_max_pixels: int
    media_max_bytes: int
    max_body: int  # LLMPI_MAX_BODY: bytes; a larger request body is refused (413) before it is read
    max_connections: int  # LLMPI_MAX_CONNECTIONS: open connections at once, per port
    max_connections_per_client: int  # LLMPI_MAX_CONNECTIONS_PER_CLIENT: from one IP address; loopback not counted
    embedding_model: str
    embedding_alias: str
    embedding_parallel: int
    webui: bool
    workers: tuple[Worker, ...]  # LLMPI_WORKERS: the boards that hold part of the model (empty: this one alone)
    workers_auto: bool  # LLMPI_WORKERS=auto: `workers` are those announced on the network at this container's start
    cluster_secret: str | None  # LLMPI_CLUSTER_SECRET or its _FILE; None = the head's generated one
    announce: str  # LLMPI_ANNOUNCE: one of ANNOUNCE_MODES (llmpi.lan.announce)
    sysfs: Path  # LLMPI_SYSFS_PATH: where the board's sysfs is read (llmpi.host.board)
    host: str
    port: int
    host_port: str
    ollama_port: int | None  # LLMPI_OLLAMA_PORT: the Ollama door's port in the container; None = off
    ollama_host_port: str  # LLMPI_OLLAMA_HOST_PORT: the port compose publishes it on (announced on the network)
    tls: bool  # LLMPI_TLS: HTTPS beside HTTP (auto: with a local CA's certificate, unless the user gave one)
    tls_cert_file: Path | None  # LLMPI_TLS_CERT_FILE and _KEY_FILE: the user's own certificate and key (both or none)
    tls_key_file: Path | None
    tls_names: tuple[str, ...]  # LLMPI_TLS_NAMES: more names and addresses for the generated certificate
    tls_port: int  # LLMPI_TLS_PORT: the HTTPS port in the container (the OpenAI API); the Ollama API's is 11443
    tls_host_port: str  # LLMPI_TLS_HOST_PORT: where compose publishes it
    ollama_tls_host_port: str  # LLMPI_OLLAMA_TLS_HOST_PORT: where compose publishes the Ollama API's HTTPS port
    http: bool  # LLMPI_HTTP: plain HTTP for the network too (off: on the container's loopback only)
    data_dir: Path
    announce_dir: Path  # shared with the announce service (llmpi.lan.announce): announce.json, workers.json
    llama_args: Mapping[str, str]  # LLAMA_ARG_* variables the user set: each wins over the launcher's choice
    hub_token: str | None = field(default=None, repr=False)  # HF_TOKEN or HF_TOKEN_FILE's contents: gated repos

    @property
    def http_host(self) -> str:
        """Where plain HTTP listens: LLMPI_HOST, or loopback only with LLMPI_HTTP=off (HTTPS alone for the network;
        the container's own processes still use plain HTTP)."""
        return self.host if self.http else "127.0.0.1"

    @property
    def server_port(self) -> int:
        """The port llama-server listens on: LLAMA_ARG_PORT when the user set it (it wins), else LLMPI_PORT."""
        raw = self.llama_args.get("LLAMA_ARG_PORT", "")
        return int(raw) if raw.strip().isdigit() else self.port

    @property
    def usage_file(self) -> Path:
        """The usage ledger per key (llama-server writes it, patch 0027; `llmpi keys usage` reads it)."""
        return self.data_dir / paths.USAGE_FILE

    @property
    def access_log_file(self) -> Path:
        """Where LLMPI_ACCESS_LOG=file writes (rotated by llama-server at 10 MiB, three old files kept)."""
        return self.data_dir / paths.ACCESS_LOG_FILE

    @property
    def models_dir(self) -> Path:
        """Where pulled models (and llmpi-prepare's) live: every finished model there is served by name."""
        return self.data_dir / "models"

    @classmethod
    def read(cls, env: Mapping[str, str]) -> Settings:
        image_max_tokens = get_int(env, "LLMPI_IMAGE_MAX_TOKENS", DEFAULT_IMAGE_MAX_TOKENS) or 1
        image_min_tokens = get_int(env, "LLMPI_IMAGE_MIN_TOKENS", None)
        if image_min_tokens is not None and image_min_tokens > image_max_tokens:
            raise ConfigError(
                f"LLMPI_IMAGE_MIN_TOKENS={image_min_tokens} is more than LLMPI_IMAGE_MAX_TOKENS={image_max_tokens}"
            )
        level = get(env, "LLMPI_LOG_LEVEL", "info").lower()
        if level not in LOG_LEVELS:
            raise ConfigError(f"LLMPI_LOG_LEVEL={level!r}: use one of {', '.join(LOG_LEVELS)}")
        template, template_file = get(env, "LLMPI_CHAT_TEMPLATE"), get(env, "LLMPI_CHAT_TEMPLATE_FILE")
        if template and template_file:
            raise ConfigError("set LLMPI_CHAT_TEMPLATE or LLMPI_CHAT_TEMPLATE_FILE, not both")
        llama_args = {k: v for k, v in env.items() if k.startswith("LLAMA_ARG_") and v != ""}
        pool = get_int(env, "LLAMA_ARG_CTX_SIZE", None, minimum=0)
        auth = get_bool(env, "LLMPI_AUTH", True)
        api_keys = file_env(env, "LLMPI_API_KEY")
        if not auth and api_keys is not None:
            raise ConfigError("LLMPI_AUTH=off and an API key are both set; remove one of them")
        embeddings = get(env, "LLMPI_EMBEDDINGS")
        return cls(
            model=get(env, "LLAMA_ARG_MODEL") or get(env, "LLMPI_MODEL"),
            model_alias=get(env, "LLMPI_MODEL_ALIAS"),
            chat_template=template,
            chat_template_file=template_file,
            mmproj=get(env, "LLMPI_MMPROJ"),
            embeddings=get_bool(env, "LLMPI_EMBEDDINGS", False) if embeddings else None,
            api_keys=api_keys,
            api_keys_origin="LLMPI_API_KEY_FILE" if get(env, "LLMPI_API_KEY_FILE") else "LLMPI_API_KEY",
            auth=auth,
            admin_keys=file_env(env, "LLMPI_ADMIN_KEY"),
            ctx_size=get_int(env, "LLMPI_CTX_SIZE", None, minimum=MIN_CONTEXT),
            trained_ctx=pool == 0,
            pool_ctx=pool or None,
            threads=get_int(env, "LLMPI_THREADS", None),
            parallel=get_int(env, "LLMPI_PARALLEL", None),
            max_tokens=_ranged(env, "LLMPI_MAX_TOKENS", DEFAULT_MAX_TOKENS, minimum=0),
            queue_max=get_int(env, "LLMPI_QUEUE_MAX", None, minimum=0),
            fairness=get_bool(env, "LLMPI_FAIRNESS", True),
            key_max_slots=_ranged(env, "LLMPI_KEY_MAX_SLOTS", 0, minimum=0),
            access_log=access_log_mode(env),
            prompt_cache=_size(env, "LLMPI_PROMPT_CACHE", None),
            speculation=speculation_mode(env),
            draft_model=draft_model(env),
            memory_limit=_size(env, "LLMPI_MEMORY_LIMIT", None),
            memory_reserve=_size(env, "LLMPI_MEMORY_RESERVE", DEFAULT_RESERVE) or 0,
            metrics=get_bool(env, "LLMPI_METRICS", True),
            log_level=level,
            remote_media=get_bool(env, "LLMPI_REMOTE_MEDIA", False),
            cors_origins=cors_origins(env, auth),
            image_max_tokens=image_max_tokens,
            image_min_tokens=image_min_tokens,
            image_max_pixels=_ranged(env, "LLMPI_IMAGE_MAX_PIXELS", DEFAULT_IMAGE_MAX_PIXELS),
            media_max_bytes=_ranged_size(env, "LLMPI_MEDIA_MAX_BYTES", DEFAULT_MEDIA_MAX_BYTES),
            max_body=_ranged_size(env, "LLMPI_MAX_BODY", DEFAULT_MAX_BODY),
            max_connections=_ranged(env, "LLMPI_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS),
            max_connections_per_client=_ranged(
                env, "LLMPI_MAX_CONNECTIONS_PER_CLIENT", DEFAULT_MAX_CONNECTIONS_PER_CLIENT
            ),
            embedding_model=get(env, "LLMPI_EMBEDDING_MODEL"),
            embedding_alias=get(env, "LLMPI_EMBEDDING_ALIAS"),
            embedding_parallel=get_int(env, "LLMPI_EMBEDDING_PARALLEL", DEFAULT_EMBEDDING_PARALLEL) or 1,
            webui=get_bool(env, "LLMPI_WEBUI", True),
            workers=parse_workers(workers_text(env)),
            workers_auto=get(env, "LLMPI_WORKERS").lower() == "auto",
            cluster_secret=cluster_secret(env),
            announce=announce_mode(env),
            sysfs=sysfs_path(env),
            host=get(env, "LLMPI_HOST", "0.0.0.0"),
            port=_ranged(env, "LLMPI_PORT", 8080, maximum=65535),
            host_port=get(env, "LLMPI_HOST_PORT") or get(env, "LLMPI_PORT", "8080"),
            ollama_port=ollama_port(env),
            ollama_host_port=get(env, "LLMPI_OLLAMA_HOST_PORT", str(DEFAULT_OLLAMA_PORT)),
            **tls_settings(env),
            data_dir=Path(get(env, "LLMPI_DATA_DIR", "/data")),
            announce_dir=Path(get(env, "LLMPI_ANNOUNCE_DIR", "/announce")),
            llama_args=llama_args,
            hub_token=hub_token(env),
        )


def access_log_mode(env: Mapping[str, str]) -> str:
    mode = get(env, "LLMPI_ACCESS_LOG", "stdout").lower()
    if mode in OFF_WORDS:
        return "off"
    if mode not in ACCESS_LOG_MODES:
        raise ConfigError(f"LLMPI_ACCESS_LOG={mode!r}: use stdout, file or off")
    return mode


def workers_text(env: Mapping[str, str]) -> str:
    """LLMPI_WORKERS as host[:port] list; for `auto`, the workers found on the network when this container started
    (llmpi.cluster.channels.resolve_auto_workers wrote them before supervisord started), none before that."""
    text = get(env, "LLMPI_WORKERS")
    if text.lower() != "auto":
        return text
    try:
        return Path(paths.runtime_file(paths.AUTO_WORKERS)).read_text().strip()
    except OSError:
        return ""


def hub_token(env: Mapping[str, str]) -> str | None:
    """HF_TOKEN, or the contents of HF_TOKEN_FILE (huggingface_hub's own names; for gated repos; never logged)."""
    token = file_env(env, "HF_TOKEN")
    return token.strip() or None if token is not None else None


def speculation_mode(env: Mapping[str, str]) -> str:
    """LLMPI_SPECULATION: ngram or off (an on word means ngram)."""
    return mode_setting(env, "LLMPI_SPECULATION", SPECULATION_MODES, DEFAULT_SPECULATION, on="ngram")


def draft_model(env: Mapping[str, str]) -> str:
    """LLMPI_DRAFT_MODEL: "" for none (unset, or an off word), "auto", or a path or model name as given."""
    text = get(env, "LLMPI_DRAFT_MODEL")
    if text.lower() in ("", "none", *OFF_WORDS):
        return ""
    return "auto" if text.lower() == "auto" else text


def announce_mode(env: Mapping[str, str]) -> str:
    """LLMPI_ANNOUNCE: one of ANNOUNCE_MODES (an on word means auto)."""
    return mode_setting(env, "LLMPI_ANNOUNCE", ANNOUNCE_MODES, "auto", on="auto")


def mode_setting(env: Mapping[str, str], name: str, modes: tuple[str, ...], default: str, on: str) -> str:
    """A setting that names one of `modes`; an on/off word as get_bool takes it means `on`/off."""
    mode = get(env, name, default).lower()
    if mode in modes:
        return mode
    try:
        return on if get_bool(env, name, True) else "off"
    except ConfigError:
        raise ConfigError(f"{name}={mode!r}: use one of {', '.join(modes)}") from None


def tls_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """LLMPI_TLS and its companions (README "HTTPS on the home network")."""
    mode = get(env, "LLMPI_TLS", "auto").lower()
    if mode not in ("auto", "on", *OFF_WORDS):
        raise ConfigError(f"LLMPI_TLS={mode!r}: use auto or off")
    tls = mode not in OFF_WORDS
    cert, key = get(env, "LLMPI_TLS_CERT_FILE"), get(env, "LLMPI_TLS_KEY_FILE")
    if bool(cert) != bool(key):
        raise ConfigError("set LLMPI_TLS_CERT_FILE and LLMPI_TLS_KEY_FILE together (a certificate and its key)")
    port = _ranged(env, "LLMPI_TLS_PORT", DEFAULT_TLS_PORT, maximum=65535)
    if port in (_ranged(env, "LLMPI_PORT", 8080, maximum=65535), ollama_port(env), OLLAMA_TLS_PORT):
        raise ConfigError(f"LLMPI_TLS_PORT={port} is taken by another port of the appliance: give HTTPS another one")
    http = get_bool(env, "LLMPI_HTTP", True)
    if not http and not tls:
        raise ConfigError("LLMPI_HTTP=off and LLMPI_TLS=off leave nothing to connect to: keep one of them on")
    names = tuple(n.strip() for n in get(env, "LLMPI_TLS_NAMES").split(",") if n.strip())
    for name in names:
        if not TLS_NAME_RE.match(name):
            raise ConfigError(f"LLMPI_TLS_NAMES: {name!r} is not a host name or an IP address")
    return {
        "tls": tls,
        "tls_cert_file": Path(cert) if cert else None,
        "tls_key_file": Path(key) if key else None,
        "tls_names": names,
        "tls_port": port,
        "tls_host_port": get(env, "LLMPI_TLS_HOST_PORT") or str(port),
        "ollama_tls_host_port": get(env, "LLMPI_OLLAMA_TLS_HOST_PORT") or str(OLLAMA_TLS_PORT),
        "http": http,
    }


def ollama_port(env: Mapping[str, str]) -> int | None:
    """LLMPI_OLLAMA_PORT: the Ollama door's port (11434), or None for off; never the OpenAI door's own port."""
    if get(env, "LLMPI_OLLAMA_PORT").lower() in OFF_WORDS:
        return None
    port = _ranged(env, "LLMPI_OLLAMA_PORT", DEFAULT_OLLAMA_PORT, maximum=65535)
    if port == _ranged(env, "LLMPI_PORT", 8080, maximum=65535):
        raise ConfigError(f"LLMPI_OLLAMA_PORT={port} is LLMPI_PORT's port too: give the Ollama door another one")
    return port


def cluster_secret(env: Mapping[str, str]) -> str | None:
    secret = file_env(env, "LLMPI_CLUSTER_SECRET")
    origin = "LLMPI_CLUSTER_SECRET_FILE" if get(env, "LLMPI_CLUSTER_SECRET_FILE") else "LLMPI_CLUSTER_SECRET"
    return check_secret(secret, origin) if secret is not None else None


def _size(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = get(env, name)
    if not raw or raw.lower() == "auto":
        return default
    try:
        return parse_size(raw)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


def _ranged(env: Mapping[str, str], name: str, default: int, minimum: int = 1, maximum: int = C_INT_MAX) -> int:
    value = get_int(env, name, default, minimum=minimum)
    assert value is not None
    if value > maximum:
        raise ConfigError(f"{name}={value} is out of range ({minimum} to {maximum})")
    return value


def _ranged_size(env: Mapping[str, str], name: str, default: str) -> int:
    value = _size(env, name, parse_size(default))
    assert value is not None
    if not 1 <= value <= C_INT_MAX:
        raise ConfigError(f"{name}={value} is out of range (1 to {C_INT_MAX})")
    return value


def parse_workers(text: str) -> tuple[Worker, ...]:
    """LLMPI_WORKERS: `host[:port],...` (port defaults to 50052)."""
    out: list[Worker] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        if item.startswith("[") and "]:" in item:  # [IPv6]:port
            host, _, port_text = item[1:].partition("]:")
        elif item.count(":") == 1:  # host:port
            host, _, port_text = item.partition(":")
        else:  # host, [IPv6] or a bare IPv6 address
            host, port_text = item.strip("[]"), str(WORKER_PORT)
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"LLMPI_WORKERS: {item!r} is not host[:port]") from None
        if not host or not 0 < port < 65535:
            raise ConfigError(f"LLMPI_WORKERS: {item!r} is not host[:port] (port 1-65534)")
        if any(w.host == host and w.port == port for w in out):
            raise ConfigError(f"LLMPI_WORKERS names {host}:{port} twice")
        out.append(Worker(host, port))
    return tuple(out)


def check_secret(secret: str, origin: str) -> str:
    """The cluster secret without surrounding blanks; refused when too short to be a key."""
    value = secret.strip()
    if len(value) < MIN_SECRET:
        raise ConfigError(
            f"{origin} is {len(value)} characters long; the cluster secret needs at least {MIN_SECRET} "
            "(use the one the head generated: docker compose exec llmpi llmpi cluster secret)"
        )
    if any(c.isspace() for c in value):
        raise ConfigError(f"{origin} contains blanks; the cluster secret is one word")
    return value
