"""Make tiny random-weight Hugging Face checkpoints for the pipeline tests. Runs inside the `prepare` image (it has
torch, transformers and sentencepiece): python3 make_models.py OUT_DIR"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

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


def tiny_llama(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    corpus = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)) for i in range(400)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_prefix=str(out / "tokenizer"),
        vocab_size=320,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    tok = LlamaTokenizer(vocab_file=str(out / "tokenizer.model"), legacy=False)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    (out / "tokenizer.vocab").unlink(missing_ok=True)
    # hidden 256: wide enough that K-quants really apply (at 64 llama.cpp falls back to q5_0)
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.float16).save_pretrained(out, safe_serialization=True)


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
    unsupported(root / "unsupported")
    print("made:", ", ".join(sorted(p.name for p in root.iterdir())))
