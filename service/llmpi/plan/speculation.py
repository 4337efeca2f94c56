"""Speculative decoding: llama-server guesses several tokens ahead and checks them in one pass of the model.

Two sources of guesses, both llama.cpp's own (common/speculative.cpp at b11312):
* n-gram (LLMPI_SPECULATION=ngram): the guesses come from the conversation itself: when the last tokens appeared
  earlier in the slot's context, what followed them then is proposed (`--spec-type ngram-mod`). No second model,
  no memory beyond a small table; it pays off when answers repeat the prompt (quoting retrieved passages, editing
  code or text), and costs throughput when they do not or when several slots already fill the cores (docs/speed.md).
* a draft model (LLMPI_DRAFT_MODEL): a small model of the same tokenizer family guesses
  (`--spec-type draft-simple --spec-draft-model FILE`). It needs the memory of a second model with a KV cache of
  its own for every slot, which the launcher's fit counts. llama.cpp cannot use a draft whose vocabulary differs
  from the served model's; `draft_mismatch` applies its rules (common_speculative_are_compatible) before the start,
  so such a draft is refused with the reason instead of failing inside llama-server.
"""

from __future__ import annotations

from pathlib import Path

from .gguf import read_vocabulary

NGRAM_TYPE = "ngram-mod"
# ngram-mod's lookup: a match of 8 tokens proposes 2 to 8 (llama.cpp's defaults, 24 and 48-64, are GPU-sized: a
# rejected 64-token draft costs a CPU as much as 64 tokens of prompt). docs/speed.md has the measurements.
NGRAM_FLAGS = (("--spec-ngram-mod-n-match", "8"), ("--spec-ngram-mod-n-min", "2"), ("--spec-ngram-mod-n-max", "8"))
DRAFT_TYPE = "draft-simple"
# common/speculative.cpp at b11312: SPEC_VOCAB_MAX_SIZE_DIFFERENCE, SPEC_VOCAB_CHECK_START_TOKEN_ID
VOCAB_MAX_SIZE_DIFFERENCE = 128
VOCAB_CHECK_START = 5


def draft_mismatch(target: Path, draft: Path) -> str | None:
    """Why llama.cpp would not draft for `target` with `draft` (their tokenizers differ), or None when it would:
    the same tokenizer kind, the same BOS and EOS tokens, vocabularies within 128 tokens of each other in size,
    and the same text for every token from id 5 on."""
    t_meta, t_tokens = read_vocabulary(target)
    d_meta, d_tokens = read_vocabulary(draft)
    kind_t, kind_d = t_meta.get("tokenizer.ggml.model"), d_meta.get("tokenizer.ggml.model")
    if kind_t != kind_d:
        return f"its tokenizer is of another kind ({kind_d!r}; the model's is {kind_t!r})"
    for what, add_key, id_key in (
        ("beginning-of-text", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id"),
        ("end-of-text", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.eos_token_id"),
    ):
        if t_meta.get(add_key) != d_meta.get(add_key):
            return (
                f"it adds the {what} token differently ({add_key} {d_meta.get(add_key)} against {t_meta.get(add_key)})"
            )
        if t_meta.get(add_key) is not False and t_meta.get(id_key) != d_meta.get(id_key):
            return f"its {what} token is another one (id {d_meta.get(id_key)}; the model's is {t_meta.get(id_key)})"
    if not t_tokens or not d_tokens:
        return "a vocabulary is missing from the file (tokenizer.ggml.tokens)"
    difference = abs(len(t_tokens) - len(d_tokens))
    if difference > VOCAB_MAX_SIZE_DIFFERENCE:
        return (
            f"its vocabulary has {len(d_tokens)} tokens and the model's {len(t_tokens)} "
            f"(llama.cpp allows a difference of {VOCAB_MAX_SIZE_DIFFERENCE})"
        )
    for i in range(VOCAB_CHECK_START, min(len(t_tokens), len(d_tokens))):
        if t_tokens[i] != d_tokens[i]:
            return f"token {i} differs: {d_tokens[i]!r} in the draft, {t_tokens[i]!r} in the model"
    return None


def spec_types(ngram: bool, draft: bool) -> str:
    """llama-server's --spec-type list: n-gram first (free when it has nothing to offer), then the draft model."""
    return ",".join(t for t, on in ((NGRAM_TYPE, ngram), (DRAFT_TYPE, draft)) if on)
