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
    listed = {t for t in re.findall(r"\]\(([^)#\s]+)\)", index) if "/" not in t}
    present = {p.name for p in docs.iterdir() if p.is_file() and not p.name.startswith(".")} - {"README.md"}
    return compare("docs/README.md", listed, present)


def test_the_readme_names_every_part_of_the_tree() -> None:
    assert readme_problems(ROOT, (ROOT / "README.md").read_text()) == []


def test_docs_index_lists_every_doc() -> None:
    assert docs_problems(ROOT, (ROOT / "docs" / "README.md").read_text()) == []


def test_the_check_finds_what_is_missing_and_what_is_gone() -> None:
    readme = (ROOT / "README.md").read_text()
    patch = sorted((ROOT / "build" / "patches").glob("*.patch"))[-1].name[:4]
    marker = sorted(markers(ROOT))[0]
    edited = re.sub(rf"\n  - `{patch}`[^\n]*(\n    [^\n]*)*", "", readme)  # a patch's item, continuation included
    edited = edited.replace("`pull.py`", "`pulls.py`").replace(f"  - `{marker}`:", "  - `no-such-marker`:")
    edited = edited.replace("  - `find`:", "  - `gone-script`: gone\n  - `find`:")
    assert readme_problems(ROOT, edited) == [
        f"build/patches/: not named: {patch}",
        "service/llmpi/models/: not named: pull.py",
        "service/llmpi/models/: named but not in the tree: pulls.py",
        "scripts/: named but not in the tree: gone-script",
        f"pytest markers: not named: {marker}",
        "pytest markers: named but not in the tree: no-such-marker",
    ]

    index = (ROOT / "docs" / "README.md").read_text()
    edited = index.replace("[memory.md](memory.md)", "[memory](memory.txt)")
    assert docs_problems(ROOT, edited) == [
        "docs/README.md: not named: memory.md",
        "docs/README.md: named but not in the tree: memory.txt",
    ]
