"""Does a model fit in memory, and with how much context? One model of memory use for the launcher's refusal at
start-up and for the model pipeline's choice of quantization before a download.

    total = weights + KV cache + compute buffers + runtime overhead (+ the reserve left to the OS)

* weights: the GGUF's tensor data (llama.cpp mmaps it; to run at speed it must stay resident).
* KV cache: n_ctx x n_layer x (K width + V width) x bytes per element (f16 by default). Layers with a sliding
  window keep only window + batch tokens per slot; that is counted when the GGUF declares a window and the
  architecture's layer pattern is known (else every layer is counted in full, an upper bound).
* compute buffers: llama.cpp's CPU compute graph for one micro-batch plus the output logits; the constants are
  calibrated against llama-server's own "compute buffer size" report (see docs/memory.md).
* runtime: code, libraries, threads, and the tokenizer's tables.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..core.units import DEFAULT_RESERVE as DEFAULT_RESERVE
from ..core.units import MIN_CONTEXT as MIN_CONTEXT
from ..core.units import GiB as GiB
from ..core.units import MiB as MiB
from ..core.units import fmt_bytes as fmt_bytes
from ..core.units import parse_size as parse_size
from .gguf import GGUFInfo

ROUTER_OVERHEAD = 16 * MiB  # llama-server in router mode, holding no model: 14.5 MiB RSS measured (docs/memory.md)
RUNTIME_OVERHEAD = 8 * MiB  # llama-server's own heap, threads and the libraries' touched pages (docs/memory.md)
# llama.cpp's CPU backend built for AMX (its sapphirerapids variant, chosen at run time on such CPUs) used 204 MiB more
# anonymous memory than the AVX-512 variants in the same 60 s soak (Gemma 3 270M, 8 slots x 4096, 2 threads:
# 907 MiB against 703 MiB; docs/memory.md): counted in every plan on an AMX CPU
AMX_WORK = 256 * MiB
DEFAULT_UBATCH = 512
DEFAULT_CONTEXT_CAP = 8192
# serving: each request (slot) has a KV cache of its own (--no-kv-unified), so the cache is slots x per-request
# context. Auto picks up to 4096 tokens a request; below 2048 it halves the slots first (docs/hardening.md)
SLOT_CONTEXT_CAP = 4096
SLOT_CONTEXT_FLOOR = 2048
MAX_SLOTS = 8
# the prompt cache (llama-server --cache-ram) is sized in MiB; under this much room it is left off
MIN_PROMPT_CACHE = 16 * MiB
# auto: room for the conversations of a household of MAX_SLOTS people beyond those in the slots, each taking up to
# twice the KV cache of a slot: llama-server stores a conversation with its context checkpoints, and for a
# sliding-window model (Gemma 3) a 900-token one took 30 MiB where a slot's share of the KV pool is 27 MiB
# (docs/speed.md)
PROMPT_CACHE_ENTRY_FACTOR = 2

# architectures whose sliding-window layers follow a fixed pattern: every Nth layer is global (full context)
SWA_GLOBAL_EVERY = {"gemma3": 6, "gemma3n": 5}


class FitError(Exception):
    """The model cannot run in the memory available; the message names the numbers."""


@dataclass(frozen=True)
class ModelShape:
    """What memory use depends on, read from a GGUF (or, for the pipeline, from a Hugging Face config)."""

    architecture: str
    weights_bytes: int
    n_layer: int
    n_embd: int
    n_vocab: int
    k_width: int  # K elements per token per layer (head_dim x n_head_kv)
    v_width: int
    n_ctx_train: int
    sliding_window: int = 0
    n_params: int = 0
    n_ff: int = 0  # feed-forward width (0: assume 4 x n_embd)

    @classmethod
    def from_gguf(cls, info: GGUFInfo) -> ModelShape:
        a = info.arch_value
        n_embd = int(a("embedding_length", 0))
        n_head = _first(a("attention.head_count", 1)) or 1
        n_head_kv = _first(a("attention.head_count_kv", n_head)) or n_head
        k_len = int(a("attention.key_length", n_embd // n_head if n_head else 0))
        v_len = int(a("attention.value_length", k_len))
        vocab = info.metadata.get("tokenizer.ggml.tokens")
        n_vocab = int(a("vocab_size", vocab if vocab is not None else 0))
        return cls(
            architecture=info.architecture,
            weights_bytes=info.file_size,
            n_layer=int(a("block_count", 0)),
            n_embd=n_embd,
            n_vocab=n_vocab,
            k_width=k_len * n_head_kv,
            v_width=v_len * n_head_kv,
            n_ctx_train=int(a("context_length", 0)),
            sliding_window=int(a("attention.sliding_window", 0) or 0),
            n_params=info.n_params,
            n_ff=_first(a("feed_forward_length", 0)),
        )


def _first(value: int | list[int]) -> int:
    if isinstance(value, list):  # per-layer values: take the largest
        return int(max(value)) if value else 0
    return int(value)


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv_cache: int
    compute: int
    overhead: int
    extra: int = 0  # what else must fit beside this model (a vision projector, a second model)
    extra_label: str = "projector"
    n_ctx: int = 0  # the whole KV pool
    n_seq: int = 1  # slots sharing it, each limited to n_ctx // n_seq
    prompt_cache: int = 0  # host-RAM copies of idle slots' prompts (llama-server --cache-ram)
    draft: int = 0  # a draft model for speculative decoding: its weights, its KV cache for every slot, its buffers

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead + self.extra + self.prompt_cache + self.draft

    @property
    def slot_ctx(self) -> int:
        return self.n_ctx // max(1, self.n_seq)

    def breakdown(self) -> str:
        parts = [
            f"weights {fmt_bytes(self.weights)}",
            f"KV cache {fmt_bytes(self.kv_cache)} ({self.n_ctx} tokens"
            + (f": {self.n_seq} slots x {self.slot_ctx})" if self.n_seq > 1 else ")"),
            f"compute buffers {fmt_bytes(self.compute)}",
            f"runtime {fmt_bytes(self.overhead)}",
        ]
        if self.prompt_cache:
            parts.append(f"prompt cache {fmt_bytes(self.prompt_cache)}")
        if self.draft:
            parts.append(f"draft model {fmt_bytes(self.draft)}")
        if self.extra:
            parts.append(f"{self.extra_label} {fmt_bytes(self.extra)}")
        return " + ".join(parts) + f" = {fmt_bytes(self.total)}"


def kv_cache_bytes(
    shape: ModelShape,
    n_ctx: int,
    n_seq: int = 1,
    n_ubatch: int = DEFAULT_UBATCH,
    bytes_per_elem: float = 2.0,
    unified: bool = True,
) -> int:
    """`unified`: one cache shared by the n_seq sequences; else one per sequence (n_ctx / n_seq tokens each), and
    each keeps its own sliding window (llama.cpp's iSWA cache: window x (n_seq if unified else 1) + ubatch)."""
    per_layer_token = (shape.k_width + shape.v_width) * bytes_per_elem
    every = SWA_GLOBAL_EVERY.get(shape.architecture, 0)
    if shape.sliding_window and every:
        n_global = shape.n_layer // every
        n_swa = shape.n_layer - n_global
        if unified:
            swa_ctx = min(n_ctx, _pad(shape.sliding_window * n_seq + n_ubatch, 256))
        else:
            per_seq = n_ctx // max(1, n_seq)
            swa_ctx = n_seq * min(per_seq, _pad(shape.sliding_window + n_ubatch, 256))
        return int(per_layer_token * (n_global * n_ctx + n_swa * swa_ctx))
    return int(per_layer_token * shape.n_layer * n_ctx)


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def compute_bytes(shape: ModelShape, n_ubatch: int = DEFAULT_UBATCH, n_seq: int = 1, n_ctx: int = 4096) -> int:
    """CPU compute graph for one micro-batch: the attention mask (f16, n_ctx x ubatch; flash attention, llama.cpp's
    CPU default, keeps the scores themselves out), activations, and output logits.

    Checked against llama-server's own "compute buffer size": Gemma 3 270M at -c 8192 28.3 MiB (this: 26 MiB),
    a 2-layer 256-wide Llama at -c 2048 6.0 MiB (6.0), all-MiniLM-L6-v2 at -c 512 5.8 MiB (7.4); docs/memory.md.
    """
    mask = n_ctx * n_ubatch * 2
    activations = n_ubatch * 4 * 8 * shape.n_embd
    logits = shape.n_vocab * 8 * max(1, n_seq)
    return mask + activations + logits


def runtime_overhead(shape: ModelShape) -> int:
    """The process itself: code and libraries, HTTP threads, and the tokenizer's tables (about 64 B a token)."""
    return RUNTIME_OVERHEAD + shape.n_vocab * 64


def draft_bytes(draft: ModelShape, n_ctx: int, n_seq: int, unified: bool) -> int:
    """A draft model beside the served one: llama-server gives it a context of the same size and slots
    (common_base_params_to_speculative at b11312), so its own KV cache and compute buffers, and its weights."""
    return (
        draft.weights_bytes
        + kv_cache_bytes(draft, n_ctx, n_seq, unified=unified)
        + compute_bytes(draft, DEFAULT_UBATCH, n_seq, n_ctx)
    )


def estimate(
    shape: ModelShape,
    n_ctx: int,
    n_seq: int = 1,
    n_ubatch: int = DEFAULT_UBATCH,
    extra: int = 0,
    extra_label: str = "projector",
    unified: bool = True,
    draft: ModelShape | None = None,
) -> Estimate:
    return Estimate(
        weights=shape.weights_bytes,
        kv_cache=kv_cache_bytes(shape, n_ctx, n_seq, n_ubatch, unified=unified),
        compute=compute_bytes(shape, n_ubatch, n_seq, n_ctx),
        overhead=runtime_overhead(shape),
        extra=extra,
        extra_label=extra_label,
        n_ctx=n_ctx,
        n_seq=n_seq,
        draft=draft_bytes(draft, n_ctx, n_seq, unified) if draft is not None else 0,
    )


def choose_context(
    shape: ModelShape,
    budget: int,
    requested: int | None,
    n_seq: int = 1,
    cap: int = DEFAULT_CONTEXT_CAP,
    extra: int = 0,
    budget_source: str = "available",
    extra_label: str = "projector",
) -> Estimate:
    """The estimate for the context to run with.

    requested=None: the largest power of two up to min(cap, trained context) that fits, at least MIN_CONTEXT.
    requested=N: exactly N. Raises FitError with the numbers when it does not fit.
    """
    if requested is not None:
        est = estimate(shape, requested, n_seq, extra=extra, extra_label=extra_label)
        if est.total > budget:
            raise FitError(_too_big(est, budget, budget_source, f"the requested context of {requested} tokens"))
        return est
    top = min(cap, shape.n_ctx_train) if shape.n_ctx_train else cap
    n_ctx = 1 << max(top, MIN_CONTEXT).bit_length() - 1
    while True:
        est = estimate(shape, n_ctx, n_seq, extra=extra, extra_label=extra_label)
        if est.total <= budget:
            return est
        if n_ctx <= MIN_CONTEXT:
            raise FitError(_too_big(est, budget, budget_source, f"even the smallest context ({MIN_CONTEXT} tokens)"))
        n_ctx //= 2


def choose_slots(
    shape: ModelShape,
    budget: int,
    slot_ctx: int | None,
    slots: int | None,
    extra: int = 0,
    budget_source: str = "available",
    extra_label: str = "projector",
    draft: ModelShape | None = None,
) -> Estimate:
    """Slots and per-request context for serving, each slot with a KV cache of its own (and the draft model's, when
    there is one).

    Given values are kept. Auto context: the largest power of two up to min(SLOT_CONTEXT_CAP, trained context);
    auto slots: MAX_SLOTS. When both are auto and the context would drop under SLOT_CONTEXT_FLOOR, the slots are
    halved first (one user's longer answer is worth more than an eighth concurrent user on a small board).
    """
    top = min(SLOT_CONTEXT_CAP, shape.n_ctx_train) if shape.n_ctx_train else SLOT_CONTEXT_CAP
    top = 1 << max(top, MIN_CONTEXT).bit_length() - 1
    contexts = [slot_ctx] if slot_ctx else [c for c in (top >> i for i in range(8)) if c >= MIN_CONTEXT]
    counts = [slots] if slots else [n for n in (MAX_SLOTS >> i for i in range(4)) if n >= 1]
    floor = SLOT_CONTEXT_FLOOR if not slot_ctx and not slots else MIN_CONTEXT
    candidates = [(n, c) for n in counts for c in contexts if c >= min(floor, top)]
    candidates += [(counts[-1], c) for c in contexts if c < min(floor, top)]
    est = None
    for n, c in candidates:
        est = estimate(shape, n * c, n, extra=extra, extra_label=extra_label, unified=False, draft=draft)
        if est.total <= budget:
            return est
    assert est is not None
    what = f"{est.n_seq} slots of {est.slot_ctx} tokens" if est.n_seq > 1 else f"a context of {est.n_ctx} tokens"
    raise FitError(_too_big(est, budget, budget_source, what))


def fixed_slots(
    shape: ModelShape,
    budget: int,
    n_ctx: int,
    n_seq: int,
    extra: int,
    budget_source: str,
    extra_label: str,
    what: str,
    draft: ModelShape | None = None,
) -> Estimate:
    """The estimate for exactly n_seq slots sharing n_ctx tokens (a cache each); FitError naming `what` if too big."""
    est = estimate(shape, n_ctx, n_seq, extra=extra, extra_label=extra_label, unified=False, draft=draft)
    if est.total > budget:
        raise FitError(_too_big(est, budget, budget_source, what))
    return est


def auto_prompt_cache(est: Estimate) -> int:
    """The prompt cache that holds the conversations of MAX_SLOTS people beyond the slots (PROMPT_CACHE_ENTRY_FACTOR
    times a slot's KV cache each), and never less than the KV pool itself."""
    per_slot = est.kv_cache // max(1, est.n_seq)
    idle = max(0, MAX_SLOTS - est.n_seq)
    return max(est.kv_cache, PROMPT_CACHE_ENTRY_FACTOR * per_slot * idle, MIN_PROMPT_CACHE)


def with_prompt_cache(est: Estimate, budget: int, requested: int | None, budget_source: str) -> Estimate:
    """Add the prompt cache. Auto: `auto_prompt_cache`, at most what the budget has left, off when less than
    MIN_PROMPT_CACHE is left. A requested size must fit."""
    if requested is None:
        room = budget - est.total
        size = min(room, auto_prompt_cache(est))
        size = size // MiB * MiB if size >= MIN_PROMPT_CACHE else 0
    else:
        size = requested // MiB * MiB
    out = replace(est, prompt_cache=size)
    if out.total > budget:
        raise FitError(
            _too_big(out, budget, budget_source, f"a prompt cache of {fmt_bytes(size)} (LLMPI_PROMPT_CACHE)")
        )
    return out


def _too_big(est: Estimate, budget: int, source: str, what: str) -> str:
    return (
        f"the model does not fit in memory with {what}: {est.breakdown()} needed, "
        f"but only {fmt_bytes(budget)} is available ({source}). "
        "Use a smaller model or quantization (e.g. Q4_K_M instead of Q8_0), a smaller LLMPI_CTX_SIZE, "
        + ("no draft model (LLMPI_DRAFT_MODEL=off), " if est.draft else "")
        + "or a board with more RAM."
    )
