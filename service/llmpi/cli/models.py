"""`llmpi models`: the models on this board, inside the container (`docker compose exec llmpi llmpi models ...`).

    llmpi models [list]          name, kind, quant, size, and whether it is loaded
    llmpi models pull NAME       a catalog name or a hub repo of GGUF files (owner/name[:QUANT]), the quant that fits
    llmpi models rm NAME [--force]   remove a pulled model (--force: even the one LLMPI_MODEL serves)
    llmpi models show NAME       the model's manifest (where it came from, sha256, size), and whether it calls tools

Works while the server runs. With several models, llama-server's router serves them; after a pull or a removal it
re-reads its list (models in use keep answering). With one model there is no router yet: after the first pull,
llama-server is restarted into router mode (requests in flight finish first).
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..core import keys, paths
from ..core.env import ConfigError
from ..core.settings import Settings
from ..host import hardware
from ..lan.announce import tell_announcer
from ..models import catalog, choose, hub, pull, resolve
from ..plan import fit
from ..plan.model_files import DEFAULT_MODEL, local_models, manifest_kind, model_alias, read_manifest, sibling_template
from ..plan.serving import plan
from ..process.launcher import write_files
from ..process.server import restart_server, router_running, serves


@dataclass(frozen=True)
class Row:
    name: str
    kind: str
    quant: str
    size: int
    where: str  # "pulled", "LLMPI_MODEL", "embedding"
    path: Path


def api(s: Settings, path: str, key: str | None, timeout: float = 10) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{s.port}{path}")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.load(resp)


def server_status(s: Settings) -> dict[str, str]:
    """model name (and aliases) -> status, as the running server reports it; {} when it does not answer."""
    try:
        data = api(
            s, "/v1/models", keys.internal_admin_key() if router_running() else keys.first_key(keys.server_keys_file())
        )
    except (OSError, ValueError):
        return {}
    status = {}
    for m in data.get("data", []):
        value = (m.get("status") or {}).get("value", "loaded") if isinstance(m, dict) else "?"
        for name in [m.get("id"), *(m.get("aliases") or [])]:
            if name:
                status[str(name)] = str(value)
    return status


def resolved(s: Settings) -> Settings:
    """The settings as the launcher used them: LLMPI_MODEL resolved to the model file on the board."""
    ref = resolve.named_model(s)
    if ref is None:
        return s
    local = pull.find_local(ref, local_models(s.models_dir))
    return resolve.serving(s, local) if local else s


def rows(s: Settings) -> list[Row]:
    """What this board serves: LLMPI_MODEL's model, the embedding model, and every model in the models directory."""
    out: list[Row] = []
    seen: set[Path] = set()
    r = resolved(s)
    for text, alias, where in (
        (r.model or DEFAULT_MODEL, r.model_alias, "LLMPI_MODEL"),
        (r.embedding_model, r.embedding_alias, "LLMPI_EMBEDDING_MODEL"),
    ):
        if not text or not Path(text).is_file():
            continue
        path = Path(text)
        manifest = read_manifest(path)
        kind = "embedding" if where == "LLMPI_EMBEDDING_MODEL" else manifest_kind(manifest)
        out.append(
            Row(
                model_alias(alias, path),
                kind,
                str(manifest.get("quant") or "?"),
                path.stat().st_size,
                where,
                path,
            )
        )
        seen.add(path.resolve())
    for m in local_models(s.models_dir):
        if m.path.resolve() not in seen:
            out.append(Row(m.name, m.kind, m.quant, m.size, "pulled", m.path))
    return out


def models_list(s: Settings) -> str:
    status = server_status(s)
    lines = [f"{'NAME':32} {'KIND':9} {'QUANT':7} {'SIZE':>9}  STATUS"]
    for row in rows(s):
        state = status.get(row.name, "not loaded" if status else "server not answering")
        note = " (default)" if row.where == "LLMPI_MODEL" else ""
        lines.append(f"{row.name:32} {row.kind:9} {row.quant:7} {row.size / 1e9:7.2f}GB  {state}{note}")
    return "\n".join(lines)


def tools_info(name: str, kind: str, path: Path) -> dict[str, object]:
    """Whether a model calls tools (docs/tools.md), as `llmpi models show` adds it to the manifest: `tools` true,
    false or null (not a catalog model: its chat template decides), and `tools_why`."""
    if kind == "embedding":
        return {"tools": False, "tools_why": "an embedding model"}
    entry = catalog.load().get(name)
    template = sibling_template(path)
    where = f"chat template {template.name}" if template else "the GGUF's own chat template"
    shipped = {t.read_text(): t.name for t in catalog.TEMPLATES_DIR.glob("*.jinja")}
    if template is not None and template.read_text() in shipped:  # llmpi's templates all call tools
        return {"tools": True, "tools_why": f"{where} (llmpi's {shipped[template.read_text()]})"}
    if entry is None:
        why = f'{where} decides: tool_choice "required" is a 400 when it has no tool-call format'
        return {"tools": None, "tools_why": why}
    if entry.tools:
        return {"tools": True, "tools_why": where}
    why = f'the catalog\'s {name} has no tool-call format: tool_choice "required" is a 400'
    return {"tools": False, "tools_why": why}


def models_show(s: Settings, name: str) -> str:
    for m in local_models(s.models_dir):
        if m.name == name:
            return json.dumps({**m.manifest, **tools_info(m.name, m.kind, m.path)}, indent=2)
    for row in rows(s):
        if row.name == name:
            manifest = read_manifest(row.path) or {"file": str(row.path), "size": row.size, "manifest": None}
            return json.dumps({**manifest, **tools_info(row.name, row.kind, row.path)}, indent=2)
    raise ConfigError(f"no model named {name!r} on this board (llmpi models list)")


def apply_change(s: Settings, out: TextIO) -> None:
    """Let the running server see the models directory as it is now: the router re-reads its preset; a server
    with one model (no router) is restarted, into router mode when there are several models now."""
    if s.workers:
        print(
            "llmpi: LLMPI_WORKERS is set: the boards serve LLMPI_MODEL alone; other models are kept, not served",
            file=out,
        )
        return
    hw = hardware.detect()
    new = plan(resolved(s), hw)
    preset = Path(paths.runtime_file(paths.MODELS_PRESET))
    if router_running() and preset in new.files:
        write_files(new.files)
        tell_announcer(s, new.announced, out)
        try:
            api(s, "/models?reload=1", keys.internal_admin_key(), timeout=60)
        except (OSError, ValueError) as e:
            raise ConfigError(f"the router did not take the new list ({e}); it applies at the next start") from None
        print("llmpi: the server's model list is updated", file=out)
        return
    if preset not in new.files and not router_running():
        return  # still one model: nothing to tell the server
    if restart_server(served=serves(s.port)):
        print(
            "llmpi: restarting llama-server to serve the changed list of models "
            "(requests in flight finish first; about a minute without answers)",
            file=out,
        )
    else:
        print("llmpi: the server is not running; the change applies when it starts", file=out)


def models_pull(s: Settings, text: str, out: TextIO, progress: bool = False) -> str:
    """Pull a model by name onto the board, then let the server see it. `progress`: write the pull's progress file
    in the runtime directory, as the launcher's pull does (read by the Ollama door's /api/pull)."""
    try:
        ref = choose.parse_ref(text, catalog.load())
        local = pull.find_local(ref, local_models(s.models_dir))
        if local is not None:
            return f"{local.name} is on this board already ({local.path.name}); `llmpi models rm {local.name}` first"
        budget, source = resolve.pull_budget(s, hardware.detect())
        token = s.hub_token
        remote = hub.inspect(ref.repo, ref.revision, token)
        p = choose.plan_pull(ref, remote, budget, source, token)
        print(p.table, file=out, flush=True)
        pull.download(p, s.models_dir, token, lambda m: print(f"llmpi: {m}", file=out, flush=True), progress)
    except hub.HubError as e:
        raise ConfigError(str(e)) from None
    apply_change(s, out)
    return f'pulled {ref.name} ({p.quant}, {p.total_bytes / 1e9:.2f} GB): use it with "model": "{ref.name}"'


def models_rm(s: Settings, name: str, force: bool, out: TextIO) -> str:
    local = next((m for m in local_models(s.models_dir) if m.name == name), None)
    if local is None:
        if any(row.name == name for row in rows(s)):
            raise ConfigError(f"{name} is not a pulled model (it is set by LLMPI_MODEL or built into the image)")
        raise ConfigError(f"no pulled model named {name!r} (llmpi models list)")
    served = resolved(s)
    if Path(served.model or DEFAULT_MODEL).resolve() == local.path.resolve() and not force:
        raise ConfigError(
            f"{name} is the model LLMPI_MODEL serves; set LLMPI_MODEL to another one first, or use --force "
            "(then the next start pulls it again, or refuses)"
        )
    files = [local.manifest_path, local.path]  # the manifest first: without it the model is not listed
    template = sibling_template(local.path)
    if template is not None:  # the chat template the pull put beside it
        files.append(template)
    if local.mmproj is not None:
        files.append(local.mmproj)
    home = s.models_dir.resolve()
    outside = [f for f in files if f.parent.resolve() != home]
    if outside:  # local_models confines a manifest's files to the models directory; this never deletes elsewhere
        raise ConfigError(f"{name}: {', '.join(map(str, outside))} is not in {s.models_dir}; nothing was removed")
    freed = sum(f.stat().st_size for f in files if f.is_file())
    for f in files:
        f.unlink(missing_ok=True)
    apply_change(s, out)
    return f"removed {name} ({fit.fmt_bytes(freed)} freed)"


def disk_line(s: Settings) -> str:
    usage = shutil.disk_usage(s.models_dir if s.models_dir.exists() else s.data_dir)
    return f"{usage.free / 1e9:.1f} GB free in {s.models_dir}"
