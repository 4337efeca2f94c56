"""The README's "How it is built" and docs/README.md against the tree: every patch, package, module, script, test
folder, pytest marker and doc file is named, and nothing that is gone.

The lists come from the tree (build/patches/, service/llmpi/, scripts/, tests/, pyproject.toml, docs/), never from
this file. The section is a list: a top item per part of the tree (- `scripts/`: ...), and under some of them an
item per entry, its name first in backticks (  - `bench`: ...); a package's item names its modules as `name.py`."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## How it is built"


@dataclass
class Item:
    text: str
    children: dict[str, str] = field(default_factory=dict)


def section(readme: str) -> str:
    assert SECTION + "\n" in readme, f"README.md has no {SECTION!r} section"
    return readme.split(SECTION + "\n", 1)[1].split("\n## ", 1)[0]


def items(text: str) -> dict[str, Item]:
    """The section's top items by their first name in backticks, each with its own text and its items by name."""
    top: dict[str, Item] = {}
    current: Item | None = None
    child: str | None = None
    for line in text.splitlines():
        if m := re.match(r"- `([^`]+)`", line):
            current, child = top.setdefault(m[1], Item(line)), None
        elif current is not None and (m := re.match(r"  - `([^`]+)`", line)):
            child = m[1]
            current.children[child] = line
        elif current is not None and line.startswith("  "):
            if child is None:
                current.text += "\n" + line
            else:
                current.children[child] += "\n" + line
        else:
            current, child = None, None
    return top


def named_files(text: str, suffix: str) -> set[str]:
    return set(re.findall(rf"`([\w.-]+{re.escape(suffix)})`", text))


def entries(folder: Path) -> set[str]:
    """A folder's files and sub-folders (with a trailing /), less caches and hidden names."""
    return {
        p.name + ("/" if p.is_dir() else "")
        for p in folder.iterdir()
        if not p.name.startswith((".", "_")) and not p.name.endswith(".pyc")
    }


def modules(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}


def markers(root: Path) -> set[str]:
    options = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    return {m.split(":", 1)[0].strip() for m in options["markers"]}


def compare(what: str, named: set[str], present: set[str]) -> list[str]:
    """What is in the tree but not named, then what is named but not in the tree."""
    problems = []
    if missing := sorted(present - named):
        problems.append(f"{what}: not named: {', '.join(missing)}")
    if gone := sorted(named - present):
        problems.append(f"{what}: named but not in the tree: {', '.join(gone)}")
    return problems


def readme_problems(root: Path, readme: str) -> list[str]:
    top = items(section(readme))
    needed = ["build/patches/", "service/", "scripts/", "tests/"]
    if absent := [key for key in needed if key not in top]:
        return [f"no item - `{key}`: in {SECTION!r}" for key in absent]
    problems = compare("top items", {key for key in top if not (root / key).exists()}, set())
    if "docs/README.md" not in section(readme):
        problems.append(f"{SECTION!r} does not point at docs/README.md")

    patches = sorted((root / "build" / "patches").glob("*.patch"))
    problems += [f"{p.name}: not NNNN-name.patch" for p in patches if not re.match(r"\d{4}-[\w-]+\.patch$", p.name)]
    problems += compare("build/patches/", set(top["build/patches/"].children), {p.name[:4] for p in patches})

    package = root / "service" / "llmpi"
    packages = {p.parent.name + "/" for p in package.glob("*/__init__.py")}
    described = top["service/"].children
    problems += compare("service/llmpi/ packages", set(described), packages)
    for name in sorted(packages & set(described)):
        present = modules(package / name)
        problems += compare(f"service/llmpi/{name}", named_files(described[name], ".py"), present)

    scripts = top["scripts/"].children
    problems += compare("scripts/", set(scripts), entries(root / "scripts"))
    for name in sorted(n for n in scripts if n.endswith("/") and (root / "scripts" / n).is_dir()):
        present = modules(root / "scripts" / name)
        problems += compare(f"scripts/{name}", named_files(scripts[name], ".py"), present)

    tests = top["tests/"]
    folders = {n for n in entries(root / "tests") if n.endswith("/")}
    problems += compare("tests/ folders", set(re.findall(r"`([\w-]+/)`", tests.text)) - {"tests/"}, folders)
    problems += compare("pytest markers", set(tests.children), markers(root))
    return problems


def docs_problems(root: Path, index: str) -> list[str]:
    docs = root / "docs"
    listed = {t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", index) if "/" not in t}
    present = {p.name for p in docs.iterdir() if p.is_file() and not p.name.startswith(".")} - {"README.md"}
    return compare("docs/README.md", listed, present)


def test_the_readme_names_every_part_of_the_tree() -> None:
    assert readme_problems(ROOT, (ROOT / "README.md").read_text()) == []


def test_docs_index_lists_every_doc() -> None:
    assert docs_problems(ROOT, (ROOT / "docs" / "README.md").read_text()) == []


SMALL_README = """# x

## How it is built

- `build/patches/`: fixes, each with its reason on its first line:
  - `0001` the first
  - `0002` the second,
    on two lines
- `service/`: the package:
  - `core/`: `env.py` the environment, `paths.py` the paths
- `scripts/`:
  - `start`: start it
  - `benchlib/`: `sse.py` the SSE reader
- `tests/`: by folder, `unit/` and `lan/`. Markers:
  - `unit`: fast
  - `lan`: the network

More in docs/README.md.

## License
"""


@pytest.fixture
def small_tree(tmp_path: Path) -> Path:
    """A tree that SMALL_README describes exactly."""
    for name in [
        "build/patches/0001-first.patch",
        "build/patches/0002-second.patch",
        "service/llmpi/core/__init__.py",
        "service/llmpi/core/env.py",
        "service/llmpi/core/paths.py",
        "scripts/start",
        "scripts/benchlib/__init__.py",
        "scripts/benchlib/sse.py",
        "tests/unit/test_x.py",
        "tests/lan/test_y.py",
        "docs/a.md",
        "docs/b.png",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / "scripts" / "__pycache__").mkdir()
    markers = '[tool.pytest.ini_options]\nmarkers = ["unit: fast", "lan: the network"]\n'
    (tmp_path / "pyproject.toml").write_text(markers)
    return tmp_path


def test_the_check_finds_what_is_missing_and_what_is_gone(small_tree: Path) -> None:
    assert readme_problems(small_tree, SMALL_README) == []
    for name in ["build/patches/0003-third.patch", "service/llmpi/core/units.py", "scripts/soak", "tests/board/t.py"]:
        (small_tree / name).parent.mkdir(parents=True, exist_ok=True)
        (small_tree / name).write_text("")
    (small_tree / "service/llmpi/host").mkdir()
    (small_tree / "service/llmpi/host/__init__.py").write_text("")
    (small_tree / "scripts/benchlib/sse.py").unlink()
    (small_tree / "pyproject.toml").write_text('[tool.pytest.ini_options]\nmarkers = ["unit: fast", "board: b"]\n')
    edited = SMALL_README.replace("`0001` the first", "`0009` gone").replace("docs/README.md", "docs/")
    assert readme_problems(small_tree, edited) == [
        "'## How it is built' does not point at docs/README.md",
        "build/patches/: not named: 0001, 0003",
        "build/patches/: named but not in the tree: 0009",
        "service/llmpi/ packages: not named: host/",
        "service/llmpi/core/: not named: units.py",
        "scripts/: not named: soak",
        "scripts/benchlib/: named but not in the tree: sse.py",
        "tests/ folders: not named: board/",
        "pytest markers: not named: board",
        "pytest markers: named but not in the tree: lan",
    ]
    assert readme_problems(small_tree, SMALL_README.replace("- `scripts/`:", "- `script/`:"))[0] == (
        "no item - `scripts/`: in '## How it is built'"
    )


def test_the_docs_check_finds_what_is_missing_and_what_is_gone(small_tree: Path) -> None:
    assert docs_problems(small_tree, "- [a.md](a.md): a\n- [b.png](b.png): b\n- [README](../README.md)") == []
    assert docs_problems(small_tree, "- [a](a.txt): a\n- [b.png](b.png#top): b") == [
        "docs/README.md: not named: a.md",
        "docs/README.md: named but not in the tree: a.txt",
    ]


def test_every_test_folder_is_in_testpaths() -> None:
    """CI runs pytest's testpaths: a folder of tests left out of them is never run (tests/fairness once was)."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    folders = {f"tests/{p.parent.name}" for p in (ROOT / "tests").glob("*/test_*.py")}
    assert sorted(folders - set(options["testpaths"])) == []
