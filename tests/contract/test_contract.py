"""What holds only while llama.cpp does (marker `contract`, which scripts/bump-llama runs after a bump): the image's
llama.cpp is the build the pin names, every flag and LLAMA_ARG_* variable the launcher can emit is one the
image's llama-server knows, and so is every ggml-rpc-server flag a worker uses. The patches' own tests carry the
marker where they live (each patch names its test on its second line; tests/unit/test_patches.py checks that)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from tests.compose_helpers import ROOT

pytestmark = pytest.mark.contract

PIN = ROOT / "build" / "llama.cpp.pin"
PLAN = ROOT / "service" / "llmpi" / "plan"
WORKER = ROOT / "service" / "llmpi" / "cluster" / "worker.py"


def pin() -> dict[str, str]:
    lines = [line.split("=", 1) for line in PIN.read_text().splitlines() if "=" in line and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in lines}


def run_in_image(image: str, *argv: str) -> str:
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", argv[0], image, *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout + out.stderr


def strings_in(paths: list[Path], pattern: str) -> set[str]:
    """Every string constant in the modules that matches `pattern` whole."""
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(pattern, node.value):
                found.add(node.value)
    return found


@pytest.fixture(scope="module")
def server_help(appliance_image: str) -> str:
    text = run_in_image(appliance_image, "llama-server", "--help")
    assert "--model" in text, text[-2000:]
    return text


def test_the_image_runs_the_build_the_pin_names(appliance_image: str) -> None:
    p = pin()
    out = run_in_image(appliance_image, "llama-server", "--version")
    assert f"build {p['LLAMA_CPP_BUILD_NUMBER']}, commit {p['LLAMA_CPP_COMMIT']}" in out, out
    version = run_in_image(appliance_image, "cat", "/opt/llama/version.json")
    assert f'"llama_cpp": "b{p["LLAMA_CPP_BUILD_NUMBER"]}"' in version


def test_every_flag_the_launcher_emits_exists(server_help: str) -> None:
    modules = sorted(PLAN.glob("*.py"))
    flags = strings_in(modules, r"--[a-z][a-z0-9-]+")
    assert {"--model", "--api-key-file", "--fair-keys", "--tls-port", "--models-preset", "--rpc"} <= flags
    listed = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", server_help))
    assert sorted(flags - listed) == [], "flags the launcher emits that this llama-server does not know"


def test_every_llama_arg_variable_the_launcher_sets_exists(server_help: str) -> None:
    variables = strings_in(sorted(PLAN.glob("*.py")), r"LLAMA_ARG_[A-Z0-9_]+")
    assert len(variables) > 30
    listed = set(re.findall(r"LLAMA_ARG_[A-Z0-9_]+", server_help))
    assert sorted(variables - listed) == [], "LLAMA_ARG_* variables this llama-server does not read"


def test_every_flag_a_worker_gives_ggml_rpc_server_exists(appliance_image: str) -> None:
    flags = strings_in([WORKER], r"--[a-z][a-z0-9-]+")
    assert flags, "the worker's ggml-rpc-server flags"
    text = run_in_image(appliance_image, "ggml-rpc-server", "--help")
    listed = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text))
    assert sorted(flags - listed) == [], text
