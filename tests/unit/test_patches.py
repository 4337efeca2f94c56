"""The patch series (build/patches/), in the one format scripts/bump-llama and the Dockerfile apply with
`git apply`: each patch's first line is its reason, its second names the test(s) that fail without it, and every
test named exists and carries the `contract` marker, so that `pytest -m contract` after a bump runs each patch's
proof."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.contract]

ROOT = Path(__file__).resolve().parents[2]
PATCHES = sorted((ROOT / "build" / "patches").glob("*.patch"))
NODE = re.compile(r"^(tests/[\w/]+\.py)::(?:(\w+)::)?(\w+)$")


def named_tests(patch: Path) -> list[str]:
    second = patch.read_text().splitlines()[1]
    assert second.startswith("Test: "), f"{patch.name}: line 2 names its test: `Test: tests/...py::test_name`"
    return [t.strip() for t in second.removeprefix("Test: ").split(",")]


def contract_tests(path: Path) -> set[str]:
    """`name` and `Class::name` of the test functions in `path` decorated with pytest.mark.contract."""
    found = set()
    tree = ast.parse(path.read_text())
    scopes: list[tuple[str, list[ast.stmt]]] = [("", tree.body)]
    scopes += [(f"{n.name}::", n.body) for n in tree.body if isinstance(n, ast.ClassDef)]
    for prefix, body in scopes:
        for node in body:
            marks = [ast.unparse(d) for d in getattr(node, "decorator_list", [])]
            if isinstance(node, ast.FunctionDef) and any("mark.contract" in m for m in marks):
                found.add(prefix + node.name)
    return found


def test_the_series_is_numbered_without_gaps() -> None:
    numbers = [int(p.name[:4]) for p in PATCHES]
    assert numbers == list(range(1, len(PATCHES) + 1))


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name[:4])
def test_each_patch_gives_its_reason_and_its_test_then_a_git_diff(patch: Path) -> None:
    lines = patch.read_text().splitlines()
    assert lines[0] and not lines[0].startswith(("diff", "---", "Test:")), "line 1: the reason, one line"
    assert lines[2] == "" and lines[3].startswith("diff --git a/"), "line 3 empty, then `git diff` output"
    assert not any(line.startswith(("diff -ru", "--- a/", "+++ b/")) and "\t" in line for line in lines), (
        "no `diff -ru` headers with times: one format, git's"
    )
    for node in named_tests(patch):
        m = NODE.match(node)
        assert m, f"{patch.name}: {node!r} is not a test's node id"
        path = ROOT / m.group(1)
        assert path.is_file(), f"{patch.name}: {path} does not exist"
        name = f"{m.group(2)}::{m.group(3)}" if m.group(2) else m.group(3)
        assert name in contract_tests(path), f"{patch.name}: {node} is missing or lacks @pytest.mark.contract"
