"""llama.cpp quantization types: how big a model becomes in each, and the fit table for a board.

Sizes are n_params x effective bits per weight. The effective figures include llama.cpp's quant mixes (Q4_K_M
keeps some tensors in Q6_K, token embeddings and output layer differ, F32 norms); they are calibrated on Mistral
7B (7.24 B parameters), the recipe's model, whose llama.cpp file sizes are the recipe's table 11.1, and agree
with llama-quantize's own figures for Llama-3-8B within a few percent (tests/unit/test_quants.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import fit
from .split import Board, split_layers

# name -> (effective bits per weight, one-line note); best quality first
QUANTS: dict[str, tuple[float, str]] = {
    "F16": (16.0, "no quantization; for conversion and reference"),
    "Q8_0": (8.51, "practically lossless; large"),
    "Q6_K": (6.56, "very low quality loss"),
    "Q5_K_M": (5.67, "very low quality loss; recommended when it fits"),
    "Q5_K_S": (5.52, "low quality loss"),
    "Q5_0": (5.52, "legacy; prefer Q4_K_M or Q5_K_M"),
    "Q4_K_M": (4.83, "balanced quality; the usual choice"),
    "Q4_K_S": (4.57, "small, more quality loss"),
    "Q4_0": (4.54, "legacy; fastest on some ARM kernels, more loss than Q4_K_M"),
    "Q3_K_L": (4.22, "small, substantial quality loss"),
    "Q3_K_M": (3.89, "very small, high quality loss"),
    "Q3_K_S": (3.49, "very small, high quality loss"),
    "Q2_K": (3.00, "significant quality loss; last resort"),
}
# what `auto` may choose, best first (F16 and the legacy types only when asked for by name)
AUTO_ORDER = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_S", "Q3_K_M", "Q3_K_S", "Q2_K"]
GB = 1e9


class UnknownQuant(ValueError):
    pass


def normalize(name: str) -> str:
    key = name.strip().upper()
    aliases = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M", "FP16": "F16"}
    key = aliases.get(key, key)
    if key not in QUANTS:
        raise UnknownQuant(f"unknown quantization type {name!r}; known: {', '.join(QUANTS)}")
    return key


def weights_bytes(n_params: int, quant: str) -> int:
    return int(n_params * QUANTS[normalize(quant)][0] / 8)


@dataclass(frozen=True)
class Row:
    quant: str
    bits: float
    size: int  # bytes of the GGUF
    needed: int  # bytes of memory to serve it (weights + KV + compute + runtime + projector)
    fits: bool
    note: str


def estimated_sizes(n_params: int) -> dict[str, int]:
    """Each quant type's file size for a model of `n_params` parameters, from its bits per weight (for a model not
    converted yet; ready GGUF files have their real sizes)."""
    return {q: weights_bytes(n_params, q) for q in QUANTS}


def sized(shape: fit.ModelShape, size: int) -> fit.ModelShape:
    return fit.ModelShape(**{**shape.__dict__, "weights_bytes": size})


def table_from_sizes(
    shape: fit.ModelShape,
    sizes: dict[str, int],
    budget: int,
    n_ctx: int,
    n_seq: int = 1,
    extra: int = 0,
    boards: Sequence[Board] = (),
) -> list[Row]:
    """Rows for known file sizes (e.g. ready GGUF files on the hub), in quality order. With `boards` (the head
    first, then the workers), a row fits when its layers can be split across them (llmpi.plan.split.split_layers)."""
    rows = []
    for q, (bits, note) in QUANTS.items():
        if q not in sizes:
            continue
        est = fit.estimate(sized(shape, sizes[q]), n_ctx, n_seq, extra=extra)
        fits = est.total <= budget if not boards else split_fits(sized(shape, sizes[q]), est, boards)
        rows.append(Row(q, bits, sizes[q], est.total, fits, note))
    return rows


def split_fits(shape: fit.ModelShape, est: fit.Estimate, boards: Sequence[Board]) -> bool:
    try:
        split_layers(shape, est, boards)
        return True
    except fit.FitError:
        return False


def split_table(shape: fit.ModelShape, row: Row, n_ctx: int, boards: Sequence[Board], extra: int = 0) -> str:
    """The chosen row's layers per board."""
    est = fit.estimate(sized(shape, row.size), n_ctx, extra=extra)
    split = split_layers(sized(shape, row.size), est, boards)
    return f"{row.quant} across {len(boards)} boards, {shape.n_layer} layers:\n" + split.table()


def choose(rows: list[Row], wanted: str = "auto") -> Row:
    """The requested quant if it fits, or with `auto` the best-quality one that fits; FitError with the numbers
    when nothing (or not the requested one) fits."""
    by_name = {r.quant: r for r in rows}
    if wanted.lower() != "auto" and normalize(wanted) in by_name:
        row = by_name[normalize(wanted)]
        if not row.fits:
            raise fit.FitError(
                f"{row.quant} needs {fit.fmt_bytes(row.needed)} of memory ({fit.fmt_bytes(row.size)} "
                f"of weights); smaller types that fit: "
                f"{', '.join(r.quant for r in rows if r.fits) or 'none'}"
            )
        return row
    if wanted.lower() != "auto" and normalize(wanted) not in by_name:
        raise UnknownQuant(f"{normalize(wanted)} is not available (available: {', '.join(by_name)})")
    for q in AUTO_ORDER:
        if q in by_name and by_name[q].fits:
            return by_name[q]
    smallest = min(rows, key=lambda r: r.needed)
    raise fit.FitError(
        f"no quantization of this model fits: even {smallest.quant} needs "
        f"{fit.fmt_bytes(smallest.needed)} ({fit.fmt_bytes(smallest.size)} of weights)"
    )


def render(rows: list[Row], budget: int, chosen: str | None = None, boards: int = 0) -> str:
    """The table: file size in GB (as the recipe's table 11.1 and the hub list them), memory in GiB (as RAM is).
    With `boards` (a cluster's), the fits column is across them, not one board's budget."""
    fits_in = f"fits across {boards} boards?" if boards else f"fits in {fit.fmt_bytes(budget)}?"
    lines = [f"{'type':8} {'bits':>5} {'file':>9} {'memory':>10}  {fits_in}  note", "-" * 86]
    for r in rows:
        mark = "<-" if r.quant == chosen else "  "
        lines.append(
            f"{r.quant:8} {r.bits:5.2f} {r.size / GB:7.2f}GB {r.needed / fit.GiB:7.2f}GiB  "
            f"{'yes' if r.fits else 'no ':4}{mark}            {r.note}"
        )
    return "\n".join(lines)
