from __future__ import annotations

from pathlib import Path

import pytest

from llmpi.core import units
from llmpi.plan import fit
from llmpi.plan.gguf import GGUFError, read_gguf
from tests.ggufmaker import llama_like

pytestmark = pytest.mark.unit


def test_reads_metadata_and_tensor_table(tmp_path: Path) -> None:
    info = read_gguf(llama_like(tmp_path / "m.gguf", n_layer=3, n_embd=64, vocab=100))
    assert info.architecture == "llama"
    assert info.arch_value("block_count") == 3
    assert info.metadata["tokenizer.ggml.tokens"] == 100  # long arrays are skipped, their length kept
    assert len(info.tensors) == 4
    assert info.n_params == 64 * 100 + 3 * 64 * 64
    assert info.expected_size == info.file_size
    info.check_complete()


def test_truncated_file_is_detected(tmp_path: Path) -> None:
    info = read_gguf(llama_like(tmp_path / "m.gguf", truncate=1000))
    with pytest.raises(GGUFError, match=r"truncated: .* \(1000 missing\)"):
        info.check_complete()


@pytest.mark.parametrize("content", [b"", b"not a model at all, just text", b"GGUF\x07\0\0\0" + b"\0" * 32])
def test_not_gguf(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    with pytest.raises(GGUFError):
        read_gguf(p)


def test_header_cut_short(tmp_path: Path) -> None:
    full = llama_like(tmp_path / "m.gguf").read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(full[:200])
    with pytest.raises(GGUFError, match="truncated inside its header"):
        read_gguf(p)


def test_shape_and_kv_cache(tmp_path: Path) -> None:
    shape = fit.ModelShape.from_gguf(read_gguf(llama_like(tmp_path / "m.gguf", n_layer=2, n_embd=64)))
    # head_dim 16 x 2 kv heads = 32 per K and per V, 2 layers, f16
    assert (shape.k_width, shape.v_width, shape.n_layer) == (32, 32, 2)
    assert fit.kv_cache_bytes(shape, 1000) == 1000 * 2 * (32 + 32) * 2


def test_sliding_window_layers_keep_only_the_window() -> None:
    g = fit.ModelShape(
        "gemma3", 0, n_layer=18, n_embd=640, n_vocab=1, k_width=256, v_width=256, n_ctx_train=32768, sliding_window=512
    )
    full = 18 * 512 * 2 * 8192
    kv = fit.kv_cache_bytes(g, 8192, n_seq=1)
    # 3 global layers see 8192 tokens, 15 local layers 512 + 512 (window + micro-batch)
    assert kv == (3 * 8192 + 15 * 1024) * 512 * 2
    assert kv < full


def _shape(weights: int) -> fit.ModelShape:
    return fit.ModelShape(
        "llama", weights, n_layer=32, n_embd=4096, n_vocab=32000, k_width=1024, v_width=1024, n_ctx_train=32768
    )


def test_auto_context_is_the_largest_that_fits() -> None:
    shape = _shape(4 * units.GiB)
    big = fit.choose_context(shape, 16 * units.GiB, None)
    assert big.n_ctx == fit.DEFAULT_CONTEXT_CAP
    tight_budget = fit.estimate(shape, 2048).total + 1
    assert fit.choose_context(shape, tight_budget, None).n_ctx == 2048


def test_refusal_names_the_numbers() -> None:
    shape = _shape(int(4.07 * units.GiB))  # the recipe's 7B Q4_K_M
    with pytest.raises(fit.FitError) as e:
        fit.choose_context(shape, 3 * units.GiB, None, budget_source="4 GiB board")
    msg = str(e.value)
    assert "weights 4.07 GiB" in msg and "only 3.00 GiB is available (4 GiB board)" in msg
    with pytest.raises(fit.FitError, match="requested context of 32768 tokens"):
        fit.choose_context(shape, 6 * units.GiB, 32768)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8G", 8 * units.GiB),
        ("512M", 512 * units.MiB),
        ("1.5GiB", 3 * units.GiB // 2),
        ("4096", 4096),
        ("2gb", 2 * units.GiB),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert units.parse_size(text) == value


def test_parse_size_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="not a size"):
        units.parse_size("lots")
