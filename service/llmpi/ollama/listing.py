"""The models the board serves, as Ollama describes them (/api/tags, /api/show, /api/ps): llama-server's own list
(its names, loaded or not, each model's options in router mode) and each model's file (its GGUF header, its manifest,
its chat template)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..plan.gguf import GGUFError, read_gguf
from ..plan.model_files import manifest_kind, read_manifest, sibling_template

# llama.cpp's llama_ftype numbers (general.file_type) as the quant names Ollama shows
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4",
}  # fmt: skip
FOREVER = "2318-08-24T00:00:00Z"  # Ollama's expires_at for a model kept loaded without end (keep_alive -1)
TAG = ":latest"


@dataclass(frozen=True)
class Served:
    """One model llama-server serves, as its list says."""

    name: str
    loaded: bool
    kind: str  # chat | vision | embedding
    path: Path | None
    slot_ctx: int | None  # tokens a request may use (llama-server's n_ctx per slot)
    template: str  # the chat template the server uses for it ("" when unknown)
    options: dict[str, str]  # its preset section (router mode)


@dataclass(frozen=True)
class Details:
    """What the model's file says: Ollama's size, digest, modified_at, details and model_info."""

    size: int
    digest: str
    modified_at: str
    family: str
    parameter_size: str
    quantization_level: str
    context_length: int
    architecture: str
    n_params: int


def ollama_name(name: str) -> str:
    """The name in Ollama's form, with its tag (Ollama's names always have one; `name` alone means `name:latest`)."""
    return name if ":" in name else name + TAG


def served_name(requested: str, names: list[str]) -> str | None:
    """The served model an Ollama name means: the name itself, or without `:latest`; None when none is served."""
    if requested in names:
        return requested
    if requested.endswith(TAG) and requested[: -len(TAG)] in names:
        return requested[: -len(TAG)]
    return None


def preset_options(ini: str) -> dict[str, str]:
    """A router preset section's `key = value` lines."""
    out = {}
    for line in ini.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith(("[", "#", ";")):
            out[key.strip()] = value.strip()
    return out


def template_of(path: Path | None, options: dict[str, str]) -> str:
    """The chat template a router child uses: its --chat-template-file, else the file next to the model, else the
    GGUF's own."""
    chosen = options.get("chat-template-file")
    if chosen:
        return read_text(Path(chosen))
    if options.get("chat-template"):
        return options["chat-template"]
    if path is None:
        return ""
    sibling = sibling_template(path)
    if sibling is not None:
        return read_text(sibling)
    try:
        meta = read_gguf(path, keep=frozenset({"tokenizer.chat_template"})).metadata
    except (OSError, GGUFError):
        return ""
    return str(meta.get("tokenizer.chat_template") or "")


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def kind_of(path: Path | None, tags: list[str], mmproj: bool) -> str:
    for tag in tags:
        if tag in ("chat", "vision", "embedding"):
            return tag
    kind = manifest_kind(read_manifest(path)) if path is not None else "chat"
    return "vision" if mmproj and kind == "chat" else kind


def from_router(entry: dict[str, Any], full: bool = True) -> Served:
    """One entry of the router's /v1/models; `full`: with its chat template (read from its files)."""
    status = entry.get("status") or {}
    options = preset_options(str(status.get("preset") or ""))
    path = Path(options["model"]) if options.get("model") else None
    ctx, parallel = options.get("ctx-size", ""), options.get("parallel", "")
    slot = int(ctx) // max(1, int(parallel)) if ctx.isdigit() and parallel.isdigit() else None
    return Served(
        name=str(entry.get("id")),
        loaded=status.get("value") == "loaded",
        kind=kind_of(path, list(entry.get("tags") or []), bool(options.get("mmproj"))),
        path=path,
        slot_ctx=slot,
        template=template_of(path, options) if full else "",
        options=options,
    )


def from_single(entry: dict[str, Any], props: dict[str, Any]) -> Served:
    """The one model of a server without a router: /v1/models' entry and /props (empty: its name, slot context and,
    without its file, kind chat)."""
    path = Path(str(props["model_path"])) if props.get("model_path") else None
    meta = entry.get("meta") or {}
    vision = bool((props.get("modalities") or {}).get("vision"))
    return Served(
        name=str(entry.get("id")),
        loaded=True,
        kind=kind_of(path, [], vision),
        path=path,
        slot_ctx=int(meta["n_ctx"]) if isinstance(meta.get("n_ctx"), int) else None,
        template=str(props.get("chat_template") or ""),
        options={},
    )


def capabilities(m: Served) -> list[str]:
    """Ollama's capabilities, from the model's kind and its chat template."""
    if m.kind == "embedding":
        return ["embedding"]
    caps = ["completion"]
    if "tool_calls" in m.template or "tools" in m.template:
        caps.append("tools")
    if m.kind == "vision":
        caps.append("vision")
    if "<think>" in m.template or "enable_thinking" in m.template:
        caps.append("thinking")
    return caps


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parameter_size(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


_cache: dict[Path, tuple[tuple[int, int], Details]] = {}


def details(path: Path | None) -> Details | None:
    """The file's details, read once per version of the file (size and modification time)."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    stamp = (st.st_size, st.st_mtime_ns)
    hit = _cache.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    try:
        info = read_gguf(path)
    except (OSError, GGUFError):
        return None
    meta = info.metadata
    arch = str(meta.get("general.architecture") or "")
    n_params = sum(prod(t.shape) for t in info.tensors)
    manifest = read_manifest(path)
    sha = manifest.get("sha256")
    # the file's sha256 as its pull checked it; a file without a manifest gets a stand-in that changes with it
    digest = str(sha) if sha else hashlib.sha256(f"{path}:{stamp}".encode()).hexdigest()
    found = Details(
        size=st.st_size,
        digest=digest,
        modified_at=iso(st.st_mtime),
        family=arch,
        parameter_size=parameter_size(n_params),
        quantization_level=str(manifest.get("quant") or FILE_TYPES.get(int(meta.get("general.file_type", -1)), "")),
        context_length=int(meta.get(f"{arch}.context_length") or 0),
        architecture=arch,
        n_params=n_params,
    )
    _cache[path] = (stamp, found)
    return found


def prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def details_json(d: Details | None) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": d.family if d else "",
        "families": [d.family] if d else [],
        "parameter_size": d.parameter_size if d else "",
        "quantization_level": d.quantization_level if d else "",
    }


def tag_entry(m: Served) -> dict[str, Any]:
    d = details(m.path)
    return {
        "name": ollama_name(m.name),
        "model": ollama_name(m.name),
        "modified_at": d.modified_at if d else iso(time.time()),
        "size": d.size if d else 0,
        "digest": d.digest if d else "",
        "details": details_json(d),
    }


def ps_entry(m: Served, expires_at: str) -> dict[str, Any]:
    entry = tag_entry(m)
    del entry["modified_at"]
    entry.update({"expires_at": expires_at, "size_vram": 0, "context_length": m.slot_ctx or 0})
    return entry


def show(m: Served) -> dict[str, Any]:
    """POST /api/show: details, model_info (with the context length), the template, the parameters, the
    capabilities."""
    d = details(m.path)
    arch = d.architecture if d else ""
    info: dict[str, Any] = {"general.architecture": arch, "general.parameter_count": d.n_params if d else 0}
    if d:
        info[f"{arch}.context_length"] = d.context_length
    params = []
    if m.slot_ctx:
        params.append(f"num_ctx {m.slot_ctx}")
    return {
        "license": "",
        "modelfile": f"# served by llmpi (llama-server)\nFROM {m.path or m.name}\n",
        "parameters": "\n".join(params),
        "template": m.template,
        "details": details_json(d),
        "model_info": info,
        "capabilities": capabilities(m),
        "modified_at": d.modified_at if d else iso(time.time()),
    }
