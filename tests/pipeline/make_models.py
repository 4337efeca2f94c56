"""Make tiny random-weight Hugging Face checkpoints for the pipeline tests. Runs inside the `prepare` image (it has
torch, transformers and sentencepiece): python3 make_models.py OUT_DIR"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GemmaTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    SiglipVisionConfig,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WORDS = [
    "the",
    "a",
    "capybara",
    "raspberry",
    "pi",
    "model",
    "server",
    "llama",
    "quantize",
    "token",
    "context",
    "memory",
    "board",
    "small",
    "large",
    "fast",
    "slow",
    "hello",
    "world",
    "answer",
    "question",
    "image",
    "text",
    "chat",
    "key",
    "home",
    "network",
    "docker",
    "image",
    "build",
    "test",
    "run",
    "serve",
]


def train_tokenizer(out: Path, seed: tuple[int, int], **ids: object) -> None:
    """A 320-piece BPE SentencePiece model (with byte fallback) trained on a small made-up corpus."""
    a, b = seed
    corpus = [" ".join(WORDS[(i * a + j * b) % len(WORDS)] for j in range(12)) for i in range(400)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_prefix=str(out / "tokenizer"),
        vocab_size=320,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        minloglevel=2,
        **ids,
    )


def tokenizer(out: Path, kind: type, template: str, seed: tuple[int, int], **ids: object) -> Any:
    """Train the SentencePiece model into `out`, wrap it as a transformers tokenizer of `kind` with the chat
    template, and save it the way a hub repo has it (no trainer's .vocab file)."""
    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer(out, seed=seed, **ids)
    extra = {"legacy": False} if kind is LlamaTokenizer else {}
    tok = kind(vocab_file=str(out / "tokenizer.model"), **extra)
    tok.chat_template = template
    tok.save_pretrained(out)
    (out / "tokenizer.vocab").unlink(missing_ok=True)
    return tok


def tiny_llama(out: Path) -> None:
    tok = tokenizer(out, LlamaTokenizer, CHAT_TEMPLATE, (7, 3), bos_id=1, eos_id=2, unk_id=0, pad_id=-1)
    llama_weights(out, tok.vocab_size, seed=0, layers=2, intermediate=512)


def tiny_llama_draft(out: Path, tokenizer_from: Path) -> None:
    """A smaller Llama with tiny-llama's own tokenizer files: a draft model for it (issue 15)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in tokenizer_from.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            (out / f.name).write_bytes(f.read_bytes())
    tok = LlamaTokenizer.from_pretrained(out, legacy=False)
    llama_weights(out, tok.vocab_size, seed=1, layers=1, intermediate=256)


def tiny_llama_stranger(out: Path) -> None:
    """A small Llama whose tokenizer was trained on the words in another order: other pieces, the same size."""
    tok = tokenizer(out, LlamaTokenizer, CHAT_TEMPLATE, (5, 2), bos_id=1, eos_id=2, unk_id=0, pad_id=-1)
    llama_weights(out, tok.vocab_size, seed=2, layers=1, intermediate=256)


def llama_weights(out: Path, vocab_size: int, seed: int, layers: int, intermediate: int) -> None:
    """Random fp16 Llama weights, 256 wide: wide enough that K-quants really apply (at 64 llama.cpp falls back to
    q5_0)."""
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).to(torch.float16).save_pretrained(out, safe_serialization=True)


GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
    "else m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% else %}<start_of_image>"
    "{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA_SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]


def tiny_gemma3_vision(out: Path) -> None:
    """Gemma 3 with a SigLIP vision tower: 64 px images, 16 px patches, 4 image tokens."""
    tok = tokenizer(
        out,
        GemmaTokenizer,
        GEMMA_TEMPLATE,
        (5, 7),
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=GEMMA_SPECIALS,
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in GEMMA_SPECIALS}
    text = Gemma3TextConfig(
        vocab_size=tok.vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        sliding_window=512,
    )
    vision = SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        vision_use_head=False,
    )
    cfg = Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(cfg).to(torch.float16).save_pretrained(out, safe_serialization=True)
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Gemma3ImageProcessor",
                "processor_class": "Gemma3Processor",
                "image_seq_length": 4,
                "size": {"height": 64, "width": 64},
                "do_resize": True,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "resample": 2,
                "do_convert_rgb": True,
            }
        )
    )


QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def tiny_qwen2_vl(out: Path) -> None:
    """Qwen2-VL: dynamic resolution, one token per 28 x 28 px (14 px patches, 2 x 2 merged), 8 to 4096 tokens an
    image unless capped; the kind of model that --image-max-tokens acts on."""
    tok = tokenizer(
        out, LlamaTokenizer, CHAT_TEMPLATE, (3, 5), bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        user_defined_symbols=QWEN_SPECIALS,
    )  # fmt: skip
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = {
        "vocab_size": tok.vocab_size,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},  # sums to head_dim / 2 = 32
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }
    vision = {
        "depth": 3,  # the converter's name map for merger.mlp.{0,2} is built from the block indices: 3 at least
        "embed_dim": 64,
        "hidden_size": 256,  # the merger's output: the text model's width
        "mlp_ratio": 2,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    cfg = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **text,
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(cfg).to(torch.float16).save_pretrained(out, safe_serialization=True)
    # as in Qwen's repos; this transformers' Qwen2VLConfig leaves it out of config.json
    saved = json.loads((out / "config.json").read_text())
    saved["architectures"] = ["Qwen2VLForConditionalGeneration"]
    (out / "config.json").write_text(json.dumps(saved, indent=2))
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Qwen2VLImageProcessor",
                "processor_class": "Qwen2VLProcessor",
                "min_pixels": 8 * 28 * 28,
                "max_pixels": 4096 * 28 * 28,
                "patch_size": 14,
                "merge_size": 2,
                "temporal_patch_size": 2,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            }
        )
    )


def unsupported(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["TotallyNewForCausalLM"],
                "model_type": "totally-new",
                "hidden_size": 256,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "vocab_size": 320,
                "max_position_embeddings": 2048,
            }
        )
    )
    src = Path(sys.argv[1]) / "tiny-llama" / "model.safetensors"
    (out / "model.safetensors").write_bytes(src.read_bytes())


if __name__ == "__main__":
    root = Path(sys.argv[1])
    tiny_llama(root / "tiny-llama")
    tiny_llama_draft(root / "tiny-llama-draft", root / "tiny-llama")
    tiny_llama_stranger(root / "tiny-llama-stranger")
    unsupported(root / "unsupported")
    tiny_gemma3_vision(root / "tiny-gemma3-vision")
    tiny_qwen2_vl(root / "tiny-qwen2-vl")
    print("made:", ", ".join(sorted(p.name for p in root.iterdir())))
