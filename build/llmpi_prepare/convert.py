"""Convert (llama.cpp's convert_hf_to_gguf.py), quantize (llama-quantize) and verify (llama-server) a model.

Every output is written under a temporary name and renamed when complete, so a failure at any point leaves no
half-written GGUF behind.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from . import sealed
from .hub import PrepareError

DEFAULT_LLAMA_CPP = Path("/opt/llama.cpp")  # the pinned source tree in the `prepare` image


def llama_cpp_dir() -> Path:
    d = Path(os.environ.get("LLMPI_LLAMA_CPP_DIR", DEFAULT_LLAMA_CPP))
    if not (d / "convert_hf_to_gguf.py").is_file():
        raise PrepareError(
            f"llama.cpp's converter is not in {d} (set LLMPI_LLAMA_CPP_DIR to the pinned llama.cpp "
            "tree, or use the llmpi `prepare` image)"
        )
    return d


def supported_architectures(llama_cpp: Path) -> tuple[set[str], set[str]]:
    """(text, vision-projector) Hugging Face architectures the pinned converter handles, read from its source."""
    tree = ast.parse((llama_cpp / "conversion" / "__init__.py").read_text())
    found: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        else:
            continue
        if name in ("TEXT_MODEL_MAP", "MMPROJ_MODEL_MAP"):
            found[name] = set(ast.literal_eval(value))
    return found.get("TEXT_MODEL_MAP", set()), found.get("MMPROJ_MODEL_MAP", set())


def check_supported(architecture: str, llama_cpp: Path) -> bool:
    """Raise PrepareError for an architecture the converter cannot handle; True when it has a vision projector."""
    text, mmproj = supported_architectures(llama_cpp)
    if architecture not in text:
        raise PrepareError(
            f"architecture {architecture} is not supported by the pinned llama.cpp converter "
            f"({len(text)} are, e.g. LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
            "Gemma3ForCausalLM); look for a ready GGUF of this model instead"
        )
    return architecture in mmproj


def convert_env(env: Mapping[str, str]) -> dict[str, str]:
    """The converter's environment: this one with the hub libraries offline (the download is done; the converter
    reads only the local directory) and llmpi_prepare importable (llmpi_prepare.sealed starts it)."""
    here = str(Path(__file__).resolve().parent.parent)
    path = env.get("PYTHONPATH", "")
    return {**env, **sealed.OFFLINE, "PYTHONPATH": f"{here}{os.pathsep}{path}" if path else here}


def _run(cmd: list[str], what: str, log: Path, env: dict[str, str] | None = None) -> None:
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False, env=env)
    if proc.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        refused = next((line for line in reversed(lines) if line.startswith(sealed.REFUSED)), "")
        if refused:
            raise PrepareError(f"{what} refused: {refused[len(sealed.REFUSED) :].strip()}")
        tail = lines[-15:]
        # ENOSPC shows as "No space left on device", or as numpy's short write ("N requested and M written")
        full = ("No space left", "Errno 28", "requested and")
        reason = next((line for line in reversed(tail) if any(mark in line for mark in full)), "")
        if reason:
            raise PrepareError(f"{what} failed: the disk is full ({reason.strip()})")
        raise PrepareError(f"{what} failed (exit {proc.returncode}):\n  " + "\n  ".join(tail))


def _atomic_output(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def convert(hf_dir: Path, out: Path, llama_cpp: Path, mmproj: bool = False, outtype: str = "f16") -> Path:
    """convert_hf_to_gguf.py, into `out` only when it succeeded; through llmpi_prepare.sealed (never a repo's own
    code), offline (convert_env)."""
    tmp = _atomic_output(out)
    tmp.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "llmpi_prepare.sealed",  # transformers unable to run the repo's own code
        str(llama_cpp / "convert_hf_to_gguf.py"),
        str(hf_dir),
        "--outtype",
        outtype,
        "--outfile",
        str(tmp),
    ]
    if mmproj:
        cmd.append("--mmproj")
    try:
        what = "conversion" + (" of the vision projector" if mmproj else "")
        _run(cmd, what, out.with_suffix(".convert.log"), convert_env(os.environ))
        if mmproj and not tmp.exists():  # the converter prefixes the projector's file name
            prefixed = tmp.with_name("mmproj-" + tmp.name)
            if prefixed.exists():
                prefixed.rename(tmp)
        if not tmp.exists():
            raise PrepareError(f"the converter wrote no output for {hf_dir}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name("mmproj-" + tmp.name).unlink(missing_ok=True)
    return out


def quantize(src: Path, out: Path, quant: str, threads: int | None = None) -> Path:
    tmp = _atomic_output(out)
    tmp.unlink(missing_ok=True)
    cmd = [os.environ.get("LLMPI_LLAMA_QUANTIZE", "llama-quantize"), str(src), str(tmp), quant]
    if threads:
        cmd.append(str(threads))
    try:
        _run(cmd, f"quantization to {quant}", out.with_suffix(".quantize.log"))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def verify(model: Path, mmproj: Path | None = None, embedding: bool = False, timeout: float = 300) -> dict[str, object]:
    """Load the model in the pinned llama-server and generate a few tokens (or one embedding)."""
    port = _free_port()
    cmd = [
        os.environ.get("LLMPI_LLAMA_SERVER", "llama-server"),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        "512",
        "-np",
        "1",
        "--no-warmup",
    ]
    if mmproj:
        cmd += ["--mmproj", str(mmproj)]
    if embedding:
        cmd += ["--embeddings"]
    log = model.with_suffix(".verify.log")
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = "\n  ".join(log.read_text(errors="replace").strip().splitlines()[-10:])
                raise PrepareError(f"llama.cpp could not load {model.name}:\n  {tail}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise PrepareError(f"llama.cpp did not finish loading {model.name} in {timeout:.0f}s")
            time.sleep(0.2)
        body: dict[str, object] = (
            {"input": "hello world"} if embedding else {"prompt": "Hello", "n_predict": 4, "temperature": 0}
        )
        path = "/v1/embeddings" if embedding else "/completion"
        req = urllib.request.Request(
            base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise PrepareError(f"{model.name} loaded but {path} answered {e.code}: {detail}") from None
        if embedding:
            vec = answer["data"][0]["embedding"]
            if not vec:
                raise PrepareError(f"{model.name} returned an empty embedding")
            return {"embedding_dim": len(vec)}
        if int(answer.get("tokens_predicted", 0)) < 1:
            raise PrepareError(f"{model.name} loaded but generated nothing")
        return {"generated_tokens": int(answer["tokens_predicted"])}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
