"""Fit before download, and resumable downloads, against a local stand-in for the hub (HF_ENDPOINT)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmpi.core import units
from llmpi.plan import fit
from llmpi_prepare import cli, hub, plan
from tests.hubstub import Hub, Repo, safetensors_file
from tests.reference import MISTRAL_7B_CONFIG

pytestmark = pytest.mark.pipeline

MISTRAL_CONFIG = MISTRAL_7B_CONFIG


def mistral_7b_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (32000, 4096),
        "lm_head.weight": (32000, 4096),
        "model.norm.weight": (4096,),
    }
    for i in range(32):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (4096, 4096),
            p + "self_attn.k_proj.weight": (1024, 4096),
            p + "self_attn.v_proj.weight": (1024, 4096),
            p + "self_attn.o_proj.weight": (4096, 4096),
            p + "mlp.gate_proj.weight": (14336, 4096),
            p + "mlp.up_proj.weight": (14336, 4096),
            p + "mlp.down_proj.weight": (4096, 14336),
            p + "input_layernorm.weight": (4096,),
            p + "post_attention_layernorm.weight": (4096,),
        }
    return shapes


def header_only(shapes: dict[str, tuple[int, ...]]) -> bytes:
    """The safetensors header of a model, without its (14 GB of) data: enough for metadata reads."""
    offset, header = 0, {}
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw


def tiny_llama_files() -> dict[str, bytes]:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "vocab_size": 512,
    }
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (512, 256), "lm_head.weight": (512, 256)}
    for i in range(2):
        shapes[f"model.layers.{i}.mlp.up_proj.weight"] = (512, 256)
    return {
        "config.json": json.dumps(cfg).encode(),
        "model.safetensors": safetensors_file(shapes),
        "tokenizer_config.json": b"{}",
        "README.md": b"# tiny",
        "pytorch_model.bin": b"not wanted" * 100,
    }


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Hub]:
    with Hub() as h:
        h.repos["mistralai/Mistral-7B-v0.1"] = Repo(
            {"config.json": json.dumps(MISTRAL_CONFIG).encode(), "model.safetensors": header_only(mistral_7b_shapes())}
        )
        h.repos["test/tiny-llama"] = Repo(tiny_llama_files())
        h.repos["test/gated-llama"] = Repo(tiny_llama_files(), gated=True, token="hf_secret_token")
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield h


def test_fit_is_decided_from_metadata_before_any_weight_is_downloaded(stub: Hub) -> None:
    model = hub.inspect("mistralai/Mistral-7B-v0.1")
    assert model.n_params == 7_241_732_096  # counted from the safetensors header, through range requests
    p = plan.make_plan(model, plan.TARGETS["pi5-8gb"], "pi5-8gb", n_ctx=4096)
    assert p.chosen.quant == "Q6_K"
    with pytest.raises(fit.FitError) as e:
        plan.make_plan(model, 3 * units.GiB, "--ram 3G", n_ctx=4096)
    message = str(e.value)
    assert "does not fit in 3.00 GiB (--ram 3G): no quantization of this model fits: even Q2_K needs" in message
    assert "Q4_K_M" in message and "4.37GB" in message  # the table comes with the refusal
    # only ranged reads of the weights file (its header), never the file itself
    assert all(name == "model.safetensors" for name, _ in stub.stats.ranges)
    assert stub.stats.body_bytes.get("model.safetensors", 0) <= len(
        stub.repos["mistralai/Mistral-7B-v0.1"].files["model.safetensors"]
    )


def test_cli_plan_prints_the_table_and_refuses_with_numbers(stub: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "mistralai/Mistral-7B-v0.1", "--target", "pi5-8gb"]) == 0
    out = capsys.readouterr().out
    assert "7.24 B parameters" in out and "chosen: Q6_K" in out and "Q2_K" in out
    assert cli.main(["plan", "mistralai/Mistral-7B-v0.1", "--target", "pi4-4gb", "--quant", "Q4_K_M"]) == 1
    err = capsys.readouterr().err
    assert "Q4_K_M needs" in err and "smaller types that fit: " in err


@pytest.mark.parametrize(
    ("repo", "revision", "message"),
    [
        ("nobody/no-such-model", None, "no model repo 'nobody/no-such-model'"),
        ("test/tiny-llama", "v9.9", "has no revision 'v9.9'"),
        ("test/gated-llama", None, "is a gated model: accept its license on the hub, then pass a token"),
    ],
)
def test_bad_repos_are_clear_errors(stub: Hub, repo: str, revision: str | None, message: str) -> None:
    with pytest.raises(hub.PrepareError, match=message):
        hub.inspect(repo, revision)


def test_unknown_quant_and_target(stub: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "test/tiny-llama", "--ram", "8G", "--quant", "Q9_X"]) == 1
    assert "unknown quantization type 'Q9_X'" in capsys.readouterr().err


def test_gated_repo_with_a_token_from_a_file(stub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("hf_secret_token\n")
    monkeypatch.setenv("HF_TOKEN_FILE", str(token_file))
    token = hub.token_from_env()
    model = hub.inspect("test/gated-llama", token=token)
    out = hub.download(model, tmp_path / "dl", token)
    assert (out / "model.safetensors").read_bytes() == stub.repos["test/gated-llama"].files["model.safetensors"]


def test_download_takes_only_what_conversion_needs_and_pins_the_revision(stub: Hub, tmp_path: Path) -> None:
    model = hub.inspect("test/tiny-llama", "main")
    assert model.revision == stub.repos["test/tiny-llama"].sha
    out = hub.download(model, tmp_path / "dl")
    names = sorted(p.name for p in out.iterdir() if p.is_file())
    assert names == ["config.json", "model.safetensors", "tokenizer_config.json"]


def test_interrupted_download_resumes(stub: Hub, tmp_path: Path) -> None:
    # 24 MiB of weights: huggingface_hub writes 10 MiB chunks, so a cut after 15 MiB leaves 10 MiB to resume from
    files = tiny_llama_files()
    files["model.safetensors"] = safetensors_file({"model.embed_tokens.weight": (6 * 1024 * 1024,)}, dtype="F32")
    stub.repos["test/big-file"] = Repo(files)
    data = files["model.safetensors"]
    model = hub.inspect("test/big-file")
    stub.cut_after["model.safetensors"] = 15 * 1024 * 1024  # the connection drops, once
    out = hub.download(model, tmp_path / "dl")
    assert (out / "model.safetensors").read_bytes() == data
    resumed = [r for _, r in stub.ranges_for("model.safetensors") if r == f"bytes={10 * 1024 * 1024}-"]
    assert resumed, ("the second request continued where the first stopped", stub.stats.ranges)
    assert stub.stats.body_bytes["model.safetensors"] < 1.8 * len(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_not_enough_disk_is_refused_before_downloading(stub: Hub, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        model = hub.inspect("test/tiny-llama")
        with pytest.raises(hub.PrepareError, match="not enough disk for the download"):
            hub.download(model, small / "dl")
        assert not any((small / "dl").iterdir())
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_plan_with_workers_splits_what_one_board_cannot_hold(stub: Hub) -> None:
    """`llmpi-prepare plan <repo> --ram 3G --workers 4G,4G`: the same fit the head's launcher applies across boards."""
    model = hub.inspect("mistralai/Mistral-7B-v0.1")
    p = plan.make_plan(model, 3 * units.GiB, "--ram 3G", n_ctx=4096, workers=plan.worker_boards("4G,4G"))
    assert p.chosen.quant == "Q8_0"  # 7.7 GB across 2.75 + 3.75 + 3.75 GiB; alone, 3 GiB fits nothing
    report = p.report()
    assert "fits across 3 boards?" in report and "Q8_0 across 3 boards, 32 layers:" in report
    assert "this board (head):" in report and "worker 1:" in report and "worker 2:" in report
    with pytest.raises(fit.FitError, match=r"does not fit in 3\.00 GiB \(--ram 3G\) and 1 workers"):
        plan.make_plan(model, 3 * units.GiB, "--ram 3G", n_ctx=4096, workers=plan.worker_boards("512M"))
    with pytest.raises(ValueError, match="not a size"):
        plan.worker_boards("eight gigs")
    assert [b.budget for b in plan.worker_boards("pi5-8gb,2G")] == [
        plan.TARGETS["pi5-8gb"] - units.DEFAULT_RESERVE,
        2 * units.GiB - units.DEFAULT_RESERVE,
    ]
