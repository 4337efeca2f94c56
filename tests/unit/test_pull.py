"""Pulling a model by name (llmpi.models: choose, hub, pull) against the local hub stand-in: the name, the fit before
download, the download (resumable, sha256-checked, atomic, with a manifest), and every refusal leaving nothing
behind."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmpi.core import units
from llmpi.models import catalog, choose, pull
from llmpi.models import hub as hub_client
from llmpi.plan import fit, gguf, model_files, split
from tests.ggufmaker import llama_like, write_gguf
from tests.hubstub import Hub, Repo

pytestmark = pytest.mark.unit

ENTRIES = catalog.load()


def big_header(path: Path) -> bytes:
    """A Mistral-7B-shaped GGUF header (32 layers, 8 KV heads of 128, 32k context) with tiny tensors: the hub lists
    the real sizes; only the header is ever read."""
    meta: dict[str, Any] = {
        "general.architecture": "llama",
        "llama.context_length": 32768,
        "llama.embedding_length": 4096,
        "llama.block_count": 32,
        "llama.feed_forward_length": 14336,
        "llama.attention.head_count": 32,
        "llama.attention.head_count_kv": 8,
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(32000)],
    }
    return write_gguf(path, meta, {"token_embd.weight": (8, 8)}).read_bytes()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    with Hub() as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        yield h


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Repo:
    """Three quants of a tiny Llama-shaped model (different sizes) and a README."""
    files = {"README.md": b"# tiny"}
    for quant, n_embd in (("Q8_0", 128), ("Q4_K_M", 96), ("Q2_K", 64)):
        files[f"Tiny-{quant}.gguf"] = llama_like(tmp_path / f"{quant}.gguf", n_embd=n_embd).read_bytes()
    return Repo(files)


def test_names() -> None:
    r = choose.parse_ref("qwen3-4b-instruct", ENTRIES)
    assert (r.name, r.repo, r.quant) == ("qwen3-4b-instruct", ENTRIES["qwen3-4b-instruct"].gguf_repo, "auto")
    assert choose.parse_ref("qwen3-4b-instruct:q8_0", ENTRIES).quant == "Q8_0"
    r = choose.parse_ref("bartowski/Qwen_Qwen3-4B-GGUF:Q4_K_M", ENTRIES)
    assert (r.repo, r.quant, r.name) == ("bartowski/Qwen_Qwen3-4B-GGUF", "Q4_K_M", "qwen_qwen3-4b")
    assert choose.parse_ref("hf.co/owner/Some-Model-GGUF", ENTRIES).repo == "owner/Some-Model-GGUF"
    assert choose.parse_ref("https://huggingface.co/owner/m:Q2_K", ENTRIES).quant == "Q2_K"
    with pytest.raises(choose.PullError, match="did you mean qwen3-4b-instruct"):
        choose.parse_ref("qwen3-4b-instruc", ENTRIES)
    with pytest.raises(choose.PullError, match="unknown quantization type 'Q9'"):
        choose.parse_ref("qwen3-4b-instruct:Q9", ENTRIES)
    assert (
        model_files.is_path("/data/models/x.gguf")
        and model_files.is_path("model.GGUF")
        and not model_files.is_path("a/b")
    )


def inspect(ref: choose.Ref) -> hub_client.Remote:
    """The repo a name resolves to, as the hub stand-in lists it (no token)."""
    return hub_client.inspect(ref.repo, ref.revision, None)


def mistral_7b_repo(hub: Hub, tmp_path: Path) -> tuple[choose.Ref, hub_client.Remote]:
    """A ready-GGUF repo on the stand-in hub: a 7B model's header, the hub listing four quant files' real sizes."""
    header = big_header(tmp_path / "h.gguf")
    sizes = {"Q8_0": 7_700_000_000, "Q6_K": 5_940_000_000, "Q4_K_M": 4_370_000_000, "Q2_K": 2_720_000_000}
    hub.repos["someone/Mistral-7B-GGUF"] = Repo(
        {f"Mistral-7B-{q}.gguf": header for q in sizes},
        listed_sizes={f"Mistral-7B-{q}.gguf": n for q, n in sizes.items()},
    )
    ref = choose.parse_ref("someone/Mistral-7B-GGUF", ENTRIES)
    return ref, inspect(ref)


def test_fit_table_chooses_q4_k_m_for_an_8gb_pi_and_refuses_a_2gb_one(hub: Hub, tmp_path: Path) -> None:
    ref, remote = mistral_7b_repo(hub, tmp_path)
    pi5_8gb = int(7.9 * units.GiB) - units.DEFAULT_RESERVE
    p = choose.plan_pull(ref, remote, pi5_8gb, "test", None)
    assert (p.quant, p.model_file, p.kind) == ("Q4_K_M", "Mistral-7B-Q4_K_M.gguf", "chat")
    assert "Q6_K" in p.table and "<-" in p.table  # the whole table, the choice marked
    assert (
        choose.plan_pull(choose.parse_ref("someone/Mistral-7B-GGUF:Q6_K", ENTRIES), remote, pi5_8gb, "t", None).quant
        == "Q6_K"
    )
    pi4_4gb = int(3.7 * units.GiB) - units.DEFAULT_RESERVE
    assert choose.plan_pull(ref, remote, pi4_4gb, "test", None).quant == "Q2_K"
    with pytest.raises(choose.PullError, match=r"does not fit: no quantization of this model fits(.|\n)*Q2_K"):
        choose.plan_pull(ref, remote, 2 * units.GiB, "test", None)
    # only headers were read (ranged), never a whole file
    assert sum(hub.stats.body_bytes.values()) < 10 * (tmp_path / "h.gguf").stat().st_size


def test_download_writes_the_model_and_its_manifest_atomically(hub: Hub, tiny_repo: Repo, tmp_path: Path) -> None:
    hub.repos["someone/Tiny-GGUF"] = tiny_repo
    ref = choose.parse_ref("someone/Tiny-GGUF:Q8_0", ENTRIES)
    p = choose.plan_pull(ref, inspect(ref), 8 * units.GiB, "test", None)
    models = tmp_path / "models"
    out = io.StringIO()
    manifest_path = pull.download(p, models, None, out.write, write_progress=False)
    manifest = json.loads(manifest_path.read_text())
    model = models / "tiny.Q8_0.gguf"
    assert model.read_bytes() == tiny_repo.files["Tiny-Q8_0.gguf"]
    assert (
        manifest["sha256"] == hub_client.sha256_file(model)
        and manifest["kind"] == "chat"
        and manifest["name"] == "tiny"
    )
    assert manifest["source"]["repo"] == "someone/Tiny-GGUF" and manifest["source"]["revision"] == tiny_repo.sha
    assert sorted(p.name for p in models.iterdir()) == ["tiny.Q8_0.gguf", "tiny.Q8_0.json"]  # no work files left
    assert "pulling tiny: verifying Tiny-Q8_0.gguf 100.0%" in out.getvalue()
    [local] = model_files.local_models(models)
    assert (local.name, local.quant, local.kind) == ("tiny", "Q8_0", "chat")
    assert pull.find_local(choose.parse_ref("someone/Tiny-GGUF", ENTRIES), [local]) == local
    assert pull.find_local(choose.parse_ref("someone/Tiny-GGUF:Q2_K", ENTRIES), [local]) is None


def test_a_wrong_sha256_keeps_nothing(hub: Hub, tiny_repo: Repo, tmp_path: Path) -> None:
    tiny_repo.listed_sha256["Tiny-Q8_0.gguf"] = "0" * 64
    hub.repos["someone/Tiny-GGUF"] = tiny_repo
    ref = choose.parse_ref("someone/Tiny-GGUF:Q8_0", ENTRIES)
    p = choose.plan_pull(ref, inspect(ref), 8 * units.GiB, "test", None)
    models = tmp_path / "models"
    with pytest.raises(choose.PullError, match="sha256 does not match the hub's"):
        pull.download(p, models, None, lambda m: None, write_progress=False)
    assert list(models.iterdir()) == []


def test_a_cut_connection_resumes(hub: Hub, tmp_path: Path) -> None:
    # 24 MB: huggingface_hub writes in 10 MB chunks, so a cut at 16 MB leaves 10 MB on disk to continue from
    data = llama_like(tmp_path / "m.gguf", n_embd=1024, vocab=4096).read_bytes()
    hub.repos["someone/Cut-GGUF"] = Repo({"Cut-Q4_K_M.gguf": data})
    hub.cut_after["Cut-Q4_K_M.gguf"] = 16 * 2**20
    ref = choose.parse_ref("someone/Cut-GGUF", ENTRIES)
    p = choose.plan_pull(ref, inspect(ref), 8 * units.GiB, "test", None)
    models = tmp_path / "models"
    try:
        pull.download(p, models, None, lambda m: None, write_progress=False)
    except hub_client.HubError:  # the cut ended this pull: the next one (a restart) continues from the partial file
        assert not list(models.glob("*.json"))
        pull.download(p, models, None, lambda m: None, write_progress=False)
    assert (models / "cut.Q4_K_M.gguf").read_bytes() == data
    resumed = [int(r[6:].split("-")[0]) for _, r in hub.ranges_for("Cut-Q4_K_M.gguf")]
    assert max(resumed) >= 10 * 2**20  # continued from what was on disk, not from the start
    assert hub.stats.body_bytes["Cut-Q4_K_M.gguf"] < 2 * len(data)


def test_vision_repo_brings_its_projector_and_embedding_is_recognized(hub: Hub, tmp_path: Path) -> None:
    model = llama_like(tmp_path / "v.gguf").read_bytes()
    proj = write_gguf(tmp_path / "p.gguf", {"general.architecture": "clip"}, {"v.weight": (8, 8)}).read_bytes()
    hub.repos["someone/Vis-GGUF"] = Repo(
        {"Vis-Q4_K_M.gguf": model, "mmproj-Vis-f16.gguf": proj, "mmproj-Vis-Q8_0.gguf": proj}
    )
    ref = choose.parse_ref("someone/Vis-GGUF", ENTRIES)
    p = choose.plan_pull(ref, inspect(ref), 8 * units.GiB, "test", None)
    assert (p.kind, p.mmproj_file, p.model_file) == ("vision", "mmproj-Vis-f16.gguf", "Vis-Q4_K_M.gguf")
    manifest = json.loads(pull.download(p, tmp_path / "models", None, lambda m: None, False).read_text())
    assert manifest["mmproj"]["file"] == "vis.Q4_K_M.mmproj.gguf" and manifest["kind"] == "vision"

    meta: dict[str, Any] = {"general.architecture": "bert", "bert.context_length": 512, "bert.pooling_type": 1}
    emb = write_gguf(tmp_path / "e.gguf", meta, {"token_embd.weight": (8, 8)}).read_bytes()
    hub.repos["someone/Emb-GGUF"] = Repo({"emb-F16.gguf": emb, "emb-Q8_0.gguf": emb, "emb-Q4_K_M.gguf": emb})
    ref = choose.parse_ref("someone/Emb-GGUF", ENTRIES)
    p = choose.plan_pull(ref, inspect(ref), 8 * units.GiB, "test", None)
    assert (p.kind, p.quant) == ("embedding", "Q8_0")  # embeddings: Q8_0 by default, not Q4_K_M


def test_hub_unreachable_says_how_to_copy_a_model_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard: nothing listens
    ref = choose.parse_ref("someone/Tiny-GGUF", ENTRIES)
    expected = r"cannot reach the hub at http://127\.0\.0\.1:9(.|\n)*docker compose cp"
    with pytest.raises(hub_client.HubUnreachable, match=expected):
        inspect(ref)


def test_missing_repo_and_quant(hub: Hub, tiny_repo: Repo) -> None:
    with pytest.raises(hub_client.HubError, match="no model repo 'someone/Nothing-GGUF'"):
        hub_client.inspect("someone/Nothing-GGUF", "main", None)
    hub.repos["someone/Tiny-GGUF"] = tiny_repo
    ref = choose.parse_ref("someone/Tiny-GGUF:Q5_K_M", ENTRIES)
    with pytest.raises(choose.PullError, match="Q5_K_M is not available"):
        choose.plan_pull(ref, inspect(ref), 8 * units.GiB, "test", None)


def test_a_cluster_plan_splits_what_one_board_cannot_hold(hub: Hub, tmp_path: Path) -> None:
    """With workers (a cluster's head pulling LLMPI_MODEL, or llmpi-prepare plan --workers) a type fits when its
    layers can be split across the boards; the table says so and the chosen type's split is shown per board."""
    ref, remote = mistral_7b_repo(hub, tmp_path)
    pi4_4gb = int(3.7 * units.GiB) - units.DEFAULT_RESERVE
    assert choose.plan_pull(ref, remote, pi4_4gb, "test", None).quant == "Q2_K"  # alone
    boards = [
        split.Board("this board (head)", pi4_4gb, "test"),
        split.Board("worker 1", pi4_4gb, "test"),
        split.Board("worker 2", pi4_4gb, "test"),
    ]
    p = choose.plan_pull(ref, remote, pi4_4gb, "test", None, boards)
    assert p.quant == "Q4_K_M"  # three 4 GB boards hold the 4.4 GB file
    assert "fits across 3 boards?" in p.table and "Q4_K_M across 3 boards" in p.table
    lines = [line for line in p.table.splitlines() if " layers, needs " in line]
    assert [line.split(":")[0].strip() for line in lines] == ["this board (head)", "worker 1", "worker 2"]
    assert (
        sum(int(line.split(": ")[1].split(" layers")[0]) for line in lines)
        == fit.ModelShape.from_gguf(gguf.read_gguf(tmp_path / "h.gguf")).n_layer
    )
    with pytest.raises(choose.PullError, match="does not fit"):
        small = [split.Board("this board (head)", 2 * units.GiB, "t"), split.Board("w", 64 * units.MiB, "t")]
        choose.plan_pull(ref, remote, 2 * units.GiB, "test", None, small)
