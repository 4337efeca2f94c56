"""The catalog (service/catalog.toml): every entry complete and pullable by name; the README's table and examples
agree with it; llmpi-prepare's view of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmpi.models import catalog, choose, hub
from llmpi_prepare import cli
from tests.ggufmaker import llama_like
from tests.hubstub import Hub, Repo

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent.parent
README = (ROOT / "README.md").read_text()
ENTRIES = catalog.load(ROOT / "service" / "catalog.toml")
NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def test_the_default_catalog_is_the_one_in_service() -> None:
    assert catalog.DEFAULT_CATALOG == ROOT / "service" / "catalog.toml"


def test_the_catalog_has_chat_vision_and_embedding_models_for_every_board() -> None:
    kinds = {e.kind for e in ENTRIES.values()}
    assert kinds == set(catalog.KINDS)
    assert {"qwen3-4b-instruct", "gemma-3-4b-it"} <= set(ENTRIES)
    assert ENTRIES["gemma-3-4b-it"].kind == "vision"
    for board in ("4 GB", "8 GB", "16 GB"):
        assert any(board in e.boards for e in ENTRIES.values()), board


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_every_entry_is_complete(name: str) -> None:
    e = ENTRIES[name]
    assert NAME.fullmatch(name), f"{name!r}: names are lowercase, without spaces or '/'"
    assert e.kind in catalog.KINDS
    assert REPO.fullmatch(e.gguf_repo), e.gguf_repo
    for field in ("description", "why", "boards"):
        text = getattr(e, field)
        assert text.strip() and "\n" not in text, f"{name}: {field} is one line"
    assert "{quant}" in e.gguf_pattern and e.gguf_pattern.lower().endswith(".gguf")
    assert e.quant == "auto" or e.quant.upper() == e.quant
    if e.kind == "vision":
        assert e.mmproj.lower().endswith(".gguf"), f"{name}: a vision entry names its projector"
        assert "mmproj" in e.mmproj.lower()
    else:
        assert not e.mmproj
    if e.repo:  # llmpi-prepare converts it: the transformers repo and the class the converter keys on
        assert REPO.fullmatch(e.repo) and e.architecture and e.revision


def test_readme_catalog_table_lists_exactly_the_catalog() -> None:
    section = README.split("### The catalog", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (\w+) \| ([^|]+) \|", section, re.MULTILINE)
    assert [name for name, _, _ in rows] == list(ENTRIES)
    for name, kind, boards in rows:
        assert (kind, boards.strip()) == (ENTRIES[name].kind, ENTRIES[name].boards)


def test_names_in_readme_examples_are_in_the_catalog() -> None:
    words = re.findall(
        r"(?:LLMPI_(?:EMBEDDING_)?MODEL=|LLMPI_BAKE_MODEL=|llmpi models (?:pull|rm|show) |prepare run )([^\s`'\")]+)",
        README,
    )
    # paths (/data/...), hub repos (owner/name) and placeholders (<name>) are not catalog names
    used = {w for w in words if "/" not in w and not w.startswith(("<", "$"))}
    assert "qwen3-4b-instruct" in used  # the README's own example
    assert used <= set(ENTRIES), used - set(ENTRIES)
    # llmpi-prepare (and so a baked image) converts: the names it is shown with have a transformers repo
    converted = re.findall(r"(?:LLMPI_BAKE_MODEL=|prepare run )([a-z0-9][a-z0-9._-]*)\s", README)
    assert converted and all(ENTRIES[name].repo for name in converted), converted


def test_model_files_and_projectors_are_told_apart() -> None:
    """The one file picker (llmpi.models.choose), which the appliance's pull and llmpi-prepare's ready GGUF files
    share: a model file is never a projector, and the projector is the entry's."""
    files = ["gemma-3-4b-it-Q4_K_M.gguf", "gemma-3-4b-it-f16.gguf", "mmproj-model-f16.gguf", "README.md"]
    remote = hub.Remote("ggml-org/gemma-3-4b-it-GGUF", "0" * 40, {n: hub.RemoteFile(n, 1, None) for n in files})
    ref = choose.entry_ref(ENTRIES["gemma-3-4b-it"])
    assert choose.quant_files(ref, remote) == {"F16": "gemma-3-4b-it-f16.gguf", "Q4_K_M": "gemma-3-4b-it-Q4_K_M.gguf"}
    assert choose.projector_file(ref, remote) == "mmproj-model-f16.gguf"
    assert choose.quant_files(choose.Ref("x", remote.repo, "auto", "x", "*Q8_0*.gguf"), remote) == {}


@pytest.mark.parametrize("command", ["plan", "download", "run"])
def test_prepare_pulls_ready_gguf_only_entries_like_the_appliance(
    command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry without a transformers repo goes through llmpi.models.pull (the bake stage uses this): its fit table,
    then the files and the manifest in --out; without a hub, a clear error and nothing written."""
    gguf = llama_like(tmp_path / "m.gguf").read_bytes()
    (tmp_path / "catalog.toml").write_text(
        '[models."tiny"]\nkind = "chat"\ngguf_repo = "test/Tiny-GGUF"\ndescription = "d"\nwhy = "w"\nboards = "any"\n'
    )
    monkeypatch.setenv("LLMPI_CATALOG", str(tmp_path / "catalog.toml"))
    out = tmp_path / "out"
    args = [command, "tiny", "--ram", "8G"] + (["--out", str(out)] if command != "plan" else [])
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    assert cli.main(args) == 1
    assert "cannot reach the hub" in capsys.readouterr().err and not out.exists()
    with Hub() as h:
        h.repos["test/Tiny-GGUF"] = Repo({"tiny-Q4_K_M.gguf": gguf, "tiny-Q8_0.gguf": gguf})
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "Q4_K_M" in printed and "<-" in printed  # the fit table, the choice marked
    if command == "plan":
        assert not out.exists()
    else:
        assert sorted(p.name for p in out.iterdir()) == ["tiny.Q4_K_M.gguf", "tiny.Q4_K_M.json"]


def test_prepare_lists_the_catalog(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMPI_CATALOG", raising=False)
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    for e in ENTRIES.values():
        row = rf"^{re.escape(e.name)} +{e.kind} +{re.escape(e.gguf_repo)} +{re.escape(e.boards)}$"
        assert re.search(row, out, re.MULTILINE), e.name
        assert e.why in out
