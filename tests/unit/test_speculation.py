"""Speculative decoding's settings (issue 15): n-gram drafts by default, a draft model checked against the served
model's vocabulary and counted in the memory fit."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from llmpi.core.env import ConfigError
from llmpi.core.settings import Settings
from llmpi.models import catalog, resolve
from llmpi.plan import serving, speculation
from llmpi.plan.gguf import read_vocabulary
from llmpi.process import launcher
from tests.ggufmaker import llama_like
from tests.unit.helpers import HW, NO_PAGE, flags, preset_sections, pulled

pytestmark = [pytest.mark.unit, pytest.mark.speed]
VOCAB = ["<unk>", "<s>", "</s>", *(f"piece{i}" for i in range(3, 300))]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    model = llama_like(tmp_path / "big.Q4_K_M.gguf", n_layer=4, n_embd=256, tokens=VOCAB)
    # no announcer beside it (its directory does not exist): nothing to wait for, nothing written to /announce
    return {
        "LLMPI_MODEL": str(model),
        "LLMPI_DATA_DIR": str(tmp_path / "data"),
        "LLMPI_ANNOUNCE_DIR": str(tmp_path / "ann"),
    }


def plan_flags(env: dict[str, str]) -> dict[str, str | None]:
    return flags(launcher.prepare(env, HW, out=io.StringIO()).plan.argv)


def test_speculation_is_off_by_default_and_ngram_on_request(env: dict[str, str]) -> None:
    f = plan_flags(env)
    assert "--spec-type" not in f and "--spec-draft-model" not in f
    env["LLMPI_SPECULATION"] = "ngram"
    f = plan_flags(env)
    assert f["--spec-type"] == "ngram-mod" and "--spec-draft-model" not in f
    assert (f["--spec-ngram-mod-n-match"], f["--spec-ngram-mod-n-min"], f["--spec-ngram-mod-n-max"]) == ("8", "2", "8")
    env["LLMPI_SPECULATION"] = "on"
    assert plan_flags(env)["--spec-type"] == "ngram-mod"
    env["LLMPI_SPECULATION"] = "sometimes"
    with pytest.raises(ConfigError, match=r"LLMPI_SPECULATION='sometimes': use one of ngram, off"):
        Settings.read(env)


def test_a_draft_of_the_same_vocabulary_drafts_after_the_ngrams(env: dict[str, str], tmp_path: Path) -> None:
    draft = llama_like(tmp_path / "small.gguf", n_layer=1, n_embd=64, tokens=VOCAB)
    env.update(LLMPI_DRAFT_MODEL=str(draft), LLMPI_SPECULATION="ngram")
    p = launcher.prepare(env, HW, out=io.StringIO()).plan
    f = flags(p.argv)
    assert f["--spec-type"] == "ngram-mod,draft-simple" and f["--spec-draft-model"] == str(draft)
    assert "draft model" in p.notes[0]  # the memory line counts it
    env["LLMPI_SPECULATION"] = "off"
    assert plan_flags(env)["--spec-type"] == "draft-simple"


@pytest.mark.parametrize(
    ("tokens", "reason"),
    [
        ([*VOCAB[:7], "other", *VOCAB[8:]], r"token 7 differs: 'other' in the draft, 'piece7' in the model"),
        (VOCAB + [f"extra{i}" for i in range(200)], r"its vocabulary has 500 tokens and the model's 300"),
    ],
)
def test_a_draft_of_another_vocabulary_is_refused_with_the_difference(
    env: dict[str, str], tmp_path: Path, tokens: list[str], reason: str
) -> None:
    env["LLMPI_DRAFT_MODEL"] = str(llama_like(tmp_path / "stranger.gguf", n_layer=1, tokens=tokens))
    with pytest.raises(ConfigError, match=r"cannot draft for big.Q4_K_M.gguf: " + reason):
        launcher.prepare(env, HW, out=io.StringIO())


def test_vocabulary_rules_follow_llama_cpp(tmp_path: Path) -> None:
    target = llama_like(tmp_path / "t.gguf", tokens=VOCAB)
    # ids under 5 are not compared (llama.cpp's SPEC_VOCAB_CHECK_START_TOKEN_ID), and up to 128 extra tokens pass
    near = llama_like(tmp_path / "n.gguf", tokens=["x", *VOCAB[1:], *(f"e{i}" for i in range(128))])
    assert speculation.draft_mismatch(target, near) is None
    meta, texts = read_vocabulary(near)
    assert meta["tokenizer.ggml.model"] == "llama" and texts[:2] == ["x", "<s>"] and len(texts) == 300 + 128


def test_the_fit_counts_the_draft_and_the_prompt_cache(env: dict[str, str], tmp_path: Path) -> None:
    draft = llama_like(tmp_path / "draft.gguf", n_layer=2, n_embd=1024, tokens=VOCAB)  # 2 x 4 MiB of weights
    env.update(LLMPI_MEMORY_LIMIT="600M", LLMPI_PARALLEL="8", LLMPI_CTX_SIZE="4096")
    without = serving.plan(Settings.read(env), HW)
    env["LLMPI_DRAFT_MODEL"] = str(draft)
    with_draft = serving.plan(Settings.read(env), HW)
    # the draft's own KV cache (8 slots x 4096 tokens x 2 layers x 2 x 1024 wide x 2 bytes: 256 MiB) and weights
    # leave less room for the prompt cache
    cache = int(str(flags(without.argv)["--cache-ram"])), int(str(flags(with_draft.argv)["--cache-ram"]))
    assert cache[1] < cache[0]
    env["LLMPI_PROMPT_CACHE"] = "200M"
    with pytest.raises(ConfigError) as e:
        serving.plan(Settings.read(env), HW)
    message = str(e.value)
    assert "prompt cache 200 MiB + draft model 185 MiB = 495 MiB needed" in message, message
    assert "(LLMPI_PROMPT_CACHE)" in message and "no draft model (LLMPI_DRAFT_MODEL=off)" in message


def test_auto_takes_the_catalog_s_draft_from_the_board(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = tmp_path / "catalog.toml"
    cat.write_text(
        '[models."big-chat"]\nkind = "chat"\ngguf_repo = "o/big-chat-GGUF"\ndescription = "d"\nwhy = "w"\n'
        'boards = "b"\ndraft = "small-chat"\n\n'
        '[models."small-chat"]\nkind = "chat"\ngguf_repo = "o/small-chat-GGUF"\ndescription = "d"\nwhy = "w"\n'
        'boards = "b"\n'
    )
    monkeypatch.setenv("LLMPI_CATALOG", str(cat))
    assert catalog.load()["big-chat"].draft == "small-chat"
    models = tmp_path / "data" / "models"
    big = pulled(models, "big-chat", n_layer=4, n_embd=256, tokens=VOCAB)
    small = pulled(models, "small-chat", n_layer=1, tokens=VOCAB)
    env.update(LLMPI_MODEL="big-chat", LLMPI_DRAFT_MODEL="auto")
    f = plan_flags(env)
    # the draft is not served by itself, so the two models on the board make no router
    assert "--models-preset" not in f and f["--model"] == str(big) and f["--alias"] == "big-chat"
    assert f["--spec-draft-model"] == str(small) and f["--spec-type"] == "draft-simple"
    # a served model the catalog names no draft for: auto says so instead of guessing
    env.update(LLMPI_MODEL="small-chat")
    with pytest.raises(ConfigError, match=r"no draft model is known for the catalog's small-chat"):
        launcher.prepare(env, HW, out=io.StringIO())


def test_router_sections_speculate_except_embeddings(env: dict[str, str], tmp_path: Path) -> None:
    models = tmp_path / "data" / "models"
    pulled(models, "other-chat")
    pulled(models, "embedder", kind="embedding", n_ctx_train=512)
    env["LLMPI_SPECULATION"] = "ngram"
    f = plan_flags(env)
    _, sections = preset_sections(Path(str(f["--models-preset"])).read_text())
    assert sections["big.Q4_K_M"]["spec-type"] == sections["other-chat"]["spec-type"] == "ngram-mod"
    assert sections["other-chat"]["spec-ngram-mod-n-max"] == "8"
    assert "spec-type" not in sections["embedder"]


def test_the_catalog_s_drafts_are_catalog_entries_of_the_same_family() -> None:
    entries = catalog.load()
    drafts = {name: e.draft for name, e in entries.items() if e.draft}
    assert drafts, "the catalog names drafts for its larger chat models"
    for name, draft in drafts.items():
        assert draft in entries and entries[draft].kind == "chat", (name, draft)
        assert name.split("-")[0] == draft.split("-")[0] or name.startswith(draft.split("-")[0]), (name, draft)


def test_a_draft_with_workers_is_refused_before_any_download(env: dict[str, str]) -> None:
    env.update(LLMPI_WORKERS="pi-b", LLMPI_DRAFT_MODEL="qwen3-0.6b")
    with pytest.raises(ConfigError, match=r"LLMPI_DRAFT_MODEL and LLMPI_WORKERS together are not supported"):
        resolve.draft_on_board(Settings.read(env), HW, io.StringIO(), NO_PAGE)
