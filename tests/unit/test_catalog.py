"""The catalog (service/catalog.toml): every entry complete and pullable by name; the README's table and examples
agree with it; llmpi-prepare's view of it."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jinja2
import pytest

from llmpi.cli import models as cli_models
from llmpi.models import catalog, choose, hub, pull
from llmpi.plan.model_files import sibling_template
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


# --- tool calls (docs/tools.md) ---------------------------------------------------------------------------------

RAW = tomllib.loads((ROOT / "service" / "catalog.toml").read_text())["models"]
TEMPLATES = ROOT / "service" / "templates"


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_every_chat_model_says_whether_it_calls_tools(name: str) -> None:
    """Said, not defaulted: a chat or vision entry states `tools`; a template the catalog ships is there and gives
    the model tool calls; an embedding model has neither."""
    e = ENTRIES[name]
    if e.kind == "embedding":
        assert "tools" not in RAW[name] and not e.template
        return
    assert isinstance(RAW[name].get("tools"), bool), f"{name}: say tools = true or false"
    if e.template:
        assert e.tools, f"{name}: a shipped template is there to give it tool calls"
        path = e.template_path()
        assert path is not None and path.parent == catalog.TEMPLATES_DIR and (TEMPLATES / e.template).is_file()
        assert "<tool_call>" in path.read_text() or "[TOOL_CALLS]" in path.read_text()


def test_gemma_3_and_mistral_get_the_templates_their_gguf_files_lack() -> None:
    """Gemma 3's own template has no tools (ggml-org's GGUF files carry it), nor have Mistral 7B v0.3's ready GGUF
    files (made before its template learnt tools); SmolVLM2, Qwen2.5-VL and LLaVA 1.6 call none."""
    for name in ("gemma-3-1b-it", "gemma-3-4b-it", "gemma-3-12b-it"):
        assert (ENTRIES[name].tools, ENTRIES[name].template) == (True, "gemma3.jinja")
    assert ENTRIES["mistral-7b-instruct-v0.3"].template == "mistral-v3.jinja"
    for name in ("smolvlm2-2.2b-instruct", "qwen2.5-vl-3b-instruct", "llava-1.6-mistral-7b"):
        assert not ENTRIES[name].tools and not ENTRIES[name].template
    tool_callers = {n for n, e in ENTRIES.items() if e.tools}
    assert {"qwen2.5-1.5b-instruct", "qwen3-4b-instruct", "llama-3.2-3b-instruct"} <= tool_callers


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ('kind = "embedding"\ntools = true', "calls no tools"),
        ('kind = "chat"\ntools = true\ntemplate = "../x.jinja"', "a .jinja file name"),
        ('kind = "chat"\ntools = "yes"', None),  # a dataclass takes it; the catalog test above refuses it
    ],
)
def test_the_catalog_refuses_tools_where_they_cannot_be(fields: str, error: str | None, tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(f'[models."m"]\n{fields}\ngguf_repo = "o/r"\ndescription = "d"\nwhy = "w"\nboards = "any"\n')
    if error is None:
        catalog.load(path)
        return
    with pytest.raises(catalog.CatalogError, match=error):
        catalog.load(path)


def test_a_pull_puts_the_catalog_template_next_to_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pull writes `<stem>.jinja` (the sibling rule then serves the model with it) for the entry's own repo only,
    and `llmpi models show` says the model calls tools."""
    gguf = llama_like(tmp_path / "m.gguf").read_bytes()
    (tmp_path / "catalog.toml").write_text(
        '[models."tiny"]\nkind = "chat"\ntools = true\ntemplate = "gemma3.jinja"\ngguf_repo = "test/Tiny-GGUF"\n'
        'description = "d"\nwhy = "w"\nboards = "any"\n'
    )
    monkeypatch.setenv("LLMPI_CATALOG", str(tmp_path / "catalog.toml"))
    out = tmp_path / "out"
    with Hub() as h:
        h.repos["test/Tiny-GGUF"] = Repo({"tiny-Q4_K_M.gguf": gguf})
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        assert cli.main(["download", "tiny", "--ram", "8G", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["tiny.Q4_K_M.gguf", "tiny.Q4_K_M.jinja", "tiny.Q4_K_M.json"]
    assert (out / "tiny.Q4_K_M.jinja").read_text() == (TEMPLATES / "gemma3.jinja").read_text()
    assert sibling_template(out / "tiny.Q4_K_M.gguf") == out / "tiny.Q4_K_M.jinja"
    model = out / "tiny.Q4_K_M.gguf"
    assert cli_models.tools_info("tiny", "chat", model) == {
        "tools": True,
        "tools_why": "chat template tiny.Q4_K_M.jinja (llmpi's gemma3.jinja)",
    }
    assert cli_models.tools_info("not-in-the-catalog", "chat", model)["tools"] is True  # llmpi's template
    other = choose.Ref("tiny", "someone/Else-GGUF", "auto", "tiny")
    assert pull.template(other) is None and pull.template(choose.Ref("t", "test/tiny-gguf", "auto", "tiny"))
    (out / "tiny.Q4_K_M.jinja").unlink()
    assert cli_models.tools_info("tiny", "chat", model) == {"tools": True, "tools_why": "the GGUF's own chat template"}
    assert cli_models.tools_info("other", "chat", model)["tools"] is None
    assert cli_models.tools_info("x", "embedding", model)["tools"] is False


GEMMA_NO_TOOLS = [
    (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " hi "}],
        "<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\n",
    ),
    (
        [
            {"role": "user", "content": [{"type": "image_url"}, {"type": "text", "text": "what"}]},
            {"role": "assistant", "content": "a cat"},
            {"role": "user", "content": "and"},
            {"role": "user", "content": "then"},
        ],
        "<bos><start_of_turn>user\n<start_of_image>what<end_of_turn>\n<start_of_turn>model\na cat<end_of_turn>\n"
        "<start_of_turn>user\nand<end_of_turn>\n<start_of_turn>user\nthen<end_of_turn>\n<start_of_turn>model\n",
    ),
]


@pytest.mark.parametrize(("messages", "prompt"), GEMMA_NO_TOOLS)
def test_the_gemma_template_without_tools_renders_what_it_did_before_tools(
    messages: list[dict[str, object]], prompt: str
) -> None:
    """The prompts the tool-less Gemma 3 template rendered, byte for byte (tests/ollama/test_tool_calls.py checks
    the same through the running llama-server's /apply-template)."""
    env = jinja2.Environment()
    env.filters["tojson"] = json.dumps
    template = env.from_string((TEMPLATES / "gemma3.jinja").read_text())
    assert template.render(bos_token="<bos>", messages=messages, add_generation_prompt=True) == prompt
    with_tools = template.render(
        bos_token="<bos>",
        messages=messages,
        add_generation_prompt=True,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )
    assert '"name": "get_weather"' in with_tools and with_tools.endswith("<start_of_turn>model\n")
