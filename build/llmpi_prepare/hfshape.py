"""A model's memory shape from its Hugging Face config.json (before any weights are downloaded)."""

from __future__ import annotations

from typing import Any

from llmpi.plan import fit

# HF architecture class -> llama.cpp architecture name, where the fit model needs it (sliding-window patterns)
LLAMA_CPP_ARCH = {
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
    "Gemma3nForConditionalGeneration": "gemma3n",
}


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config (vision models nest it under text_config)."""
    inner = config.get("text_config")
    if isinstance(inner, dict) and inner.get("num_hidden_layers"):
        return inner
    return config


def architecture(config: dict[str, Any]) -> str:
    archs = config.get("architectures") or []
    return str(archs[0]) if archs else str(config.get("model_type", "unknown"))


def shape_from_config(config: dict[str, Any], n_params: int, weights_bytes: int = 0) -> fit.ModelShape:
    t = text_config(config)
    try:
        n_layer = int(t["num_hidden_layers"])
        n_embd = int(t["hidden_size"])
        n_head = int(t["num_attention_heads"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"config.json lacks what the memory estimate needs ({e})") from None
    n_head_kv = int(t.get("num_key_value_heads") or n_head)
    head_dim = int(t.get("head_dim") or n_embd // n_head)
    arch = architecture(config)
    return fit.ModelShape(
        architecture=LLAMA_CPP_ARCH.get(arch, arch),
        weights_bytes=weights_bytes,
        n_layer=n_layer,
        n_embd=n_embd,
        n_vocab=int(t.get("vocab_size") or config.get("vocab_size") or 32000),
        k_width=head_dim * n_head_kv,
        v_width=head_dim * n_head_kv,
        n_ctx_train=int(t.get("max_position_embeddings") or 4096),
        sliding_window=int(t.get("sliding_window") or 0) if LLAMA_CPP_ARCH.get(arch) else 0,
        n_params=n_params,
        n_ff=int(t.get("intermediate_size") or 0),
    )
