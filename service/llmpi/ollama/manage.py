"""/api/pull and /api/delete: model management through `llmpi models`, the same command a user runs in the container
(its checks, its fit, its hub client), started as a process of its own. Only for the admin key."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..models.progress import read_progress
from ..plan.model_files import local_models

LLMPI = [sys.executable, "-m", "llmpi.cli.main", "models"]
POLL = 0.5  # seconds between two looks at the pull's progress
PULLED = re.compile(r"^pulled (\S+) \(")  # `llmpi models pull`'s last line: `pulled NAME (QUANT, SIZE): ...`


def hub_name(name: str) -> str:
    """An Ollama pull name as `llmpi models pull` takes it: Ollama's `hf.co/owner/repo:QUANT` is the hub repo
    `owner/repo:QUANT`; `:latest` is no quant (the one that fits)."""
    for prefix in ("https://", "hf.co/", "huggingface.co/"):
        name = name.removeprefix(prefix)
    return name.removesuffix(":latest")


def progress_line(snap: dict[str, Any]) -> dict[str, Any]:
    """The pull's progress file as Ollama's progress object."""
    line: dict[str, Any] = {"status": f"pulling {snap.get('file') or snap.get('model', '')}"}
    if snap.get("sha256"):
        line["digest"] = f"sha256:{snap['sha256']}"
    line["total"] = int(snap.get("total_bytes") or 0)
    line["completed"] = int(snap.get("done_bytes") or 0)
    if snap.get("state") == "verifying":
        line["status"] = "verifying sha256 digest"
    return line


def finished_line(output: list[str], models_dir: Path) -> dict[str, Any] | None:
    """The pulled model's file, whole, as Ollama's progress object (its digest, total = completed), from the manifest
    of the model the command's last line names; None when there is none. A pull faster than POLL shows no progress
    while it runs; this line is its progress all the same."""
    names = [m.group(1) for line in output if (m := PULLED.match(line.removeprefix("llmpi: ")))]
    found = [m for m in local_models(models_dir, refused=lambda _: None) if names and m.name == names[-1]]
    if not found or not found[0].manifest.get("sha256"):
        return None
    size = found[0].path.stat().st_size
    return {"status": f"pulling {found[0].path.name}", "digest": f"sha256:{found[0].manifest['sha256']}",
            "total": size, "completed": size}  # fmt: skip


async def pull(name: str, models_dir: Path) -> AsyncIterator[dict[str, Any]]:
    """Run `llmpi models pull NAME --progress`, yielding Ollama's progress objects, the pulled file's whole last
    (`finished_line`); the last one is {"status": "success"} or {"error": ...} with the command's own sentence."""
    yield {"status": "pulling manifest"}
    proc = await asyncio.create_subprocess_exec(
        *LLMPI, "pull", hub_name(name), "--progress", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    output: list[str] = []
    reading = asyncio.ensure_future(collect(proc.stdout, output))
    last: dict[str, Any] | None = None
    while not reading.done():
        await asyncio.wait([reading], timeout=POLL)
        snap = read_progress()
        line = progress_line(snap) if snap else None
        if line is not None and line != last:
            last = line
            yield line
    code = await proc.wait()
    if code != 0:
        yield {"error": reason(output) or f"llmpi models pull exited with {code}"}
        return
    done = finished_line(output, models_dir)
    if done is not None and done != last:
        yield done
    yield {"status": "writing manifest"}
    yield {"status": "success"}


async def collect(stream: asyncio.StreamReader, into: list[str]) -> None:
    """The command's output, kept for its error sentence and copied to the container's log."""
    while line := await stream.readline():
        text = line.decode("utf-8", "replace").rstrip()
        into.append(text)
        print(f"llmpi-ollama: {text}", flush=True)


def reason(output: list[str]) -> str:
    """The command's error: its last line, without the `llmpi: ` prefix."""
    lines = [line for line in output if line.strip()]
    return lines[-1].removeprefix("llmpi: ").removeprefix("error: ") if lines else ""


async def delete(name: str) -> tuple[int, str]:
    """`llmpi models rm NAME`: (0, "") when removed, else the exit code and the command's sentence."""
    proc = await asyncio.create_subprocess_exec(
        *LLMPI, "rm", name.removesuffix(":latest"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode("utf-8", "replace").splitlines()
    for line in text:
        print(f"llmpi-ollama: {line}", flush=True)
    return (proc.returncode or 0), (reason(text) if proc.returncode else "")
