"""The fit model against the recipe's table 11.1 (llama.cpp quant sizes for a 7B model: Mistral 7B)."""

from __future__ import annotations

import pytest

from llmpi.core import units
from llmpi.plan import fit, quants
from llmpi_prepare.hfshape import shape_from_config
from tests.reference import MISTRAL_7B_CONFIG, MISTRAL_7B_PARAMS

pytestmark = pytest.mark.unit

MISTRAL_7B = MISTRAL_7B_CONFIG

# recipe table 11.1: quant -> file size in GB
TABLE_11_1 = {
    "Q2_K": 2.72,
    "Q3_K_S": 3.16,
    "Q3_K_M": 3.52,
    "Q3_K_L": 3.82,
    "Q4_0": 4.11,
    "Q4_K_S": 4.14,
    "Q4_K_M": 4.37,
    "Q5_0": 5.00,
    "Q5_K_S": 5.00,
    "Q5_K_M": 5.13,
    "Q6_K": 5.94,
    "Q8_0": 7.70,
}
# llama-quantize's own list (tools/quantize/quantize.cpp at b11312): GiB for Llama-3-8B (8.03 B parameters)
LLAMA3_8B = {"Q4_0": 4.34, "Q3_K_M": 3.74, "Q4_K_M": 4.58, "Q5_K_M": 5.33, "Q6_K": 6.14, "Q8_0": 7.96}


@pytest.mark.parametrize(("quant", "gb"), TABLE_11_1.items())
def test_sizes_match_the_recipe_table(quant: str, gb: float) -> None:
    assert quants.weights_bytes(MISTRAL_7B_PARAMS, quant) / 1e9 == pytest.approx(gb, rel=0.03)


@pytest.mark.parametrize(("quant", "gib"), LLAMA3_8B.items())
def test_sizes_match_llama_quantize_for_another_model(quant: str, gib: float) -> None:
    assert quants.weights_bytes(8_030_261_248, quant) / units.GiB == pytest.approx(gib, rel=0.05)


def test_table_and_choice_for_a_pi() -> None:
    shape = shape_from_config(MISTRAL_7B, MISTRAL_7B_PARAMS)
    assert (shape.n_layer, shape.k_width, shape.n_ff) == (32, 1024, 14336)
    rows = quants.table_from_sizes(
        shape,
        quants.estimated_sizes(MISTRAL_7B_PARAMS),
        budget=int(7.6 * units.GiB) - units.DEFAULT_RESERVE,
        n_ctx=4096,
    )
    # 4096 tokens of f16 KV cache for Mistral 7B: 32 layers x 2 x 1024 x 2 bytes = 128 KiB a token = 512 MiB
    q4 = next(r for r in rows if r.quant == "Q4_K_M")
    assert q4.needed - q4.size == pytest.approx(
        512 * units.MiB + fit.compute_bytes(shape) + fit.runtime_overhead(shape), rel=0.01
    )
    chosen = quants.choose(rows)  # an 8 GB Pi 5: the best that fits
    assert chosen.quant == "Q6_K"
    assert quants.choose(rows, "q4_k").quant == "Q4_K_M"
    with pytest.raises(fit.FitError, match=r"Q8_0 needs .* smaller types that fit: Q6_K, Q5_K_M"):
        quants.choose(rows, "Q8_0")
    text = quants.render(rows, int(7.6 * units.GiB), chosen.quant)
    assert "Q6_K" in text and "<-" in text


def test_nothing_fits_a_4gb_pi_at_7b_except_small_types() -> None:
    shape = shape_from_config(MISTRAL_7B, MISTRAL_7B_PARAMS)
    rows = quants.table_from_sizes(
        shape,
        quants.estimated_sizes(MISTRAL_7B_PARAMS),
        budget=int(3.7 * units.GiB) - units.DEFAULT_RESERVE,
        n_ctx=4096,
    )
    assert quants.choose(rows).quant == "Q2_K"
    rows = quants.table_from_sizes(shape, quants.estimated_sizes(MISTRAL_7B_PARAMS), budget=2 * units.GiB, n_ctx=4096)
    with pytest.raises(fit.FitError, match="no quantization of this model fits: even Q2_K needs"):
        quants.choose(rows)


def test_unknown_quant() -> None:
    with pytest.raises(quants.UnknownQuant, match="unknown quantization type 'Q9_X'"):
        quants.normalize("Q9_X")


def test_vision_config_nests_the_text_model() -> None:
    cfg = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": {
            "num_hidden_layers": 2,
            "hidden_size": 256,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 64,
            "vocab_size": 1000,
            "sliding_window": 512,
        },
        "vision_config": {"hidden_size": 32},
    }
    shape = shape_from_config(cfg, 1_000_000)
    assert (shape.architecture, shape.n_layer, shape.k_width, shape.sliding_window) == ("gemma3", 2, 64, 512)


def test_download_selection() -> None:
    from llmpi_prepare.hub import _needed

    wanted = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.model",
        "tokenizer.json",
        "vocab.txt",
        "modules.json",
        "1_Pooling/config.json",
        "preprocessor_config.json",
    ]
    unwanted = ["pytorch_model.bin", "onnx/model.onnx", "README.md", "openvino/config.json", "original/params.json"]
    assert all(_needed(n) for n in wanted)
    assert not any(_needed(n) for n in unwanted)
