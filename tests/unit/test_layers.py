"""The package's layers (service/llmpi): each sub-package imports only the layers below it, nothing imports in a
circle, and no import of llmpi hides inside a function (a lazy import that dodges a cycle or the layering)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "service" / "llmpi"
# core <- host / tls / usage / volume <- plan <- models / cluster / lan <- process / ollama <- cli; one level never
# imports itself
LAYERS = {
    "core": 0,
    "host": 1,
    "tls": 1,
    "usage": 1,
    "volume": 1,
    "plan": 2,
    "models": 3,
    "cluster": 3,
    "lan": 3,
    "process": 4,
    "ollama": 4,
    "cli": 5,
}
# the model pipeline (image build time) uses what plans and pulls, never the container's processes
PREPARE_MAY_USE = {"core", "host", "plan", "models"}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path = PACKAGE) -> Iterator[tuple[str, bool]]:
    """(llmpi module imported, whether the import is inside a function or class) for each import in `path`."""
    tree = ast.parse(path.read_text())
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            target, names = "", [a.name for a in node.names]
        else:
            continue
        nested = id(node) not in top and not _type_checking_only(tree, node)
        modules = [n for n in names if n.split(".")[0] == "llmpi" and _is_module(n, root)]
        if not modules and target.split(".")[0] == "llmpi" and _is_module(target, root):
            modules = [target]  # names from a module: the module is what is imported
        for name in modules:
            yield name, nested


def _is_module(name: str, root: Path) -> bool:
    path = root.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _type_checking_only(tree: ast.Module, node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING" and node in ast.walk(n)
        for n in tree.body
    )


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""  # "" for llmpi itself (its version)


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer() -> None:
    loose = [m.name for m in PACKAGE.glob("*.py") if m.name != "__init__.py"]
    assert not loose, f"modules outside the role packages: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(LAYERS)


def wrong_imports(path: Path, root: Path = PACKAGE) -> list[str]:
    """What is wrong with the imports of one module: an import from a layer above or beside its own, or inside a
    function."""
    me = module_name(path, root)
    here = layer_of(me)
    wrong = []
    for target, nested in imported(path, root):
        there = layer_of(target)
        if nested:
            wrong.append(f"{me} imports {target} inside a function: import it at the top")
        if there and there != here and LAYERS[there] >= LAYERS[here]:
            wrong.append(f"{me} ({here}, layer {LAYERS[here]}) imports {target} ({there}, layer {LAYERS[there]})")
    return wrong


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_run_one_way(path: Path) -> None:
    assert wrong_imports(path) == []


def test_no_import_cycle() -> None:
    graph = {module_name(p): {t for t, _ in imported(p) if t != module_name(p)} for p in MODULES}
    graph = {m: {t for t in ts if t in graph} for m, ts in graph.items()}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(m) :], m]))
        if m in done:
            return
        for t in sorted(graph[m]):
            if t.startswith(m + "."):  # a package's own modules: importing the package runs its __init__ only
                continue
            visit(t, [*path, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_the_model_pipeline_uses_only_what_plans_and_pulls() -> None:
    used = {
        layer_of(t)
        for p in (ROOT / "build" / "llmpi_prepare").glob("*.py")
        for t, _ in imported_absolute(p)
        if layer_of(t)
    }
    assert used and used <= PREPARE_MAY_USE, used


def imported_absolute(path: Path) -> Iterator[tuple[str, bool]]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("llmpi."):
            yield str(node.module), False


def test_the_check_finds_an_upward_a_sideways_and_a_lazy_import(tmp_path: Path) -> None:
    root = tmp_path / "llmpi"
    for package in ("core", "models", "cluster", "process"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "process" / "launcher.py").write_text("")
    (root / "cluster" / "wire.py").write_text("")
    bad = root / "core" / "settings.py"
    bad.write_text("from ..process import launcher\n\ndef f() -> None:\n    from . import keys\n")
    (root / "core" / "keys.py").write_text("")
    sideways = root / "models" / "pull.py"
    sideways.write_text("from llmpi.cluster.wire import x\n")
    assert wrong_imports(bad, root) == [
        "llmpi.core.settings (core, layer 0) imports llmpi.process.launcher (process, layer 4)",
        "llmpi.core.settings imports llmpi.core.keys inside a function: import it at the top",
    ]
    assert wrong_imports(sideways, root) == [
        "llmpi.models.pull (models, layer 3) imports llmpi.cluster.wire (cluster, layer 3)"
    ]
