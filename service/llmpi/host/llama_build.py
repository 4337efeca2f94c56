"""The llama.cpp build in this image (written by the image build) and this llmpi's version."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__

LLAMA_DIR = Path("/opt/llama")
VERSION_FILE = LLAMA_DIR / "version.json"  # written by the image build: llama.cpp's build and the RPC protocol


def own_versions() -> dict[str, str]:
    """This image's llmpi version, llama.cpp build and RPC protocol version."""
    try:
        built = json.loads(VERSION_FILE.read_text())
    except (OSError, ValueError):
        built = {}
    return {"llmpi": __version__, "llama_cpp": str(built.get("llama_cpp", "")), "rpc": str(built.get("rpc", ""))}
