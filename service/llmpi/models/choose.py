"""What to pull: a name (`parse_ref`: a catalog name or a hub repo of ready GGUF files), the repo's file of each
quant type (`quant_files`, `projector_file`), and the one to download (`plan_pull`: the quant chosen with the same
fit table as `llmpi-prepare plan`, refused before any download when nothing fits)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch

from ..plan import fit, gguf, quants, split
from . import catalog, hub

DEFAULT_PATTERN = "*{quant}*.gguf"
PLAN_CONTEXT = 4096  # the context the fit table plans one request for (as `llmpi-prepare plan --ctx 4096`)
# `auto` pulls Q4_K_M (or the best smaller type that fits), as Ollama does: on a Pi, generation reads every weight
# once a token and is bound by memory bandwidth, so Q8_0 (1.76 x the bytes) runs at about 0.57 x the speed for a
# small gain in quality. Embedding models are small and lose more from quantization: Q8_0. A name can ask for
# any type (`qwen3-4b-instruct:Q8_0`).
AUTO_CEILING = {"chat": "Q4_K_M", "vision": "Q4_K_M", "embedding": "Q8_0"}
HUB_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "huggingface.co/", "hf.co/")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
SPLIT_RE = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
# architectures llama.cpp serves as encoders (embeddings), besides any model whose GGUF declares a pooling type
EMBEDDING_ARCHS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert", "t5encoder"}


class PullError(hub.HubError):
    """A clear reason why the model cannot be pulled (a name, a missing type, no fit, the disk, a wrong checksum);
    nothing half-written is left in the models directory."""


@dataclass(frozen=True)
class Ref:
    """What the user named, resolved to a repo of ready GGUF files."""

    text: str  # as given
    repo: str
    quant: str  # "auto" or a normalized quant type
    name: str  # the model's name on this board (the router serves it by this name)
    pattern: str = DEFAULT_PATTERN
    mmproj: str = ""  # a pattern for the projector; "" = any mmproj*.gguf of the repo
    kind: str = ""  # from the catalog; "" = decided from the GGUF header and the projector
    revision: str = "main"


@dataclass(frozen=True)
class PullPlan:
    ref: Ref
    remote: hub.Remote
    model_file: str
    mmproj_file: str | None
    quant: str
    kind: str
    shape: fit.ModelShape
    table: str  # the fit table, as `llmpi-prepare plan` prints it
    needed: int  # bytes of memory to serve the chosen file, as the fit table counts them

    @property
    def files(self) -> list[hub.RemoteFile]:
        names = [self.model_file] + ([self.mmproj_file] if self.mmproj_file else [])
        return [self.remote.files[n] for n in names]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def stem(self) -> str:
        return f"{self.ref.name}.{self.quant}"


def derived_name(repo: str) -> str:
    """A model's name on the board from its repo: bartowski/Qwen_Qwen3-4B-GGUF -> qwen_qwen3-4b."""
    name = repo.split("/")[-1]
    name = re.sub(r"[-_.]gguf$", "", name, flags=re.IGNORECASE)
    return name.lower()


def entry_ref(entry: catalog.Entry, quant: str = "", text: str = "") -> Ref:
    """A catalog entry's ready GGUF files as a Ref: `quant` (normalized), else the entry's own default."""
    return Ref(
        text or (f"{entry.name}:{quant}" if quant else entry.name),
        entry.gguf_repo,
        quant or entry.quant,
        entry.name,
        entry.gguf_pattern,
        entry.mmproj,
        entry.kind,
    )


def parse_ref(text: str, entries: Mapping[str, catalog.Entry]) -> Ref:
    """A catalog name or a hub repo, each with an optional `:QUANT`; PullError (with close catalog names) else."""
    raw = base = text.strip()
    for prefix in HUB_PREFIXES:
        if base.startswith(prefix):
            base = base[len(prefix) :]
    base, _, quant_text = base.partition(":")
    try:
        quant = quants.normalize(quant_text) if quant_text else ""
    except quants.UnknownQuant as e:
        raise PullError(f"{raw!r}: {e}") from None
    if base in entries:
        return entry_ref(entries[base], quant, raw)
    if REPO_RE.match(base):
        return Ref(raw, base, quant or "auto", derived_name(base))
    close = difflib.get_close_matches(base, list(entries), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; catalog names: {', '.join(sorted(entries))}"
    raise PullError(
        f"{raw!r} is not a model file path, a catalog name or a hub repo of GGUF files (owner/name[:QUANT]){hint}"
    )


def is_projector(name: str) -> bool:
    return "mmproj" in name.rsplit("/", 1)[-1].lower()


def quant_files(ref: Ref, remote: hub.Remote) -> dict[str, str]:
    """quant type -> the repo's file of it (one-file GGUFs matching the pattern; the shortest name when several). The
    type must stand in the name as a word of its own: `F16` is not found in `BF16`, nor `Q4_0` in `Q4_0_4_4`."""
    found = {}
    ggufs = [n for n in remote.files if n.lower().endswith(".gguf") and not is_projector(n) and not SPLIT_RE.search(n)]
    for q in quants.QUANTS:
        bounded = re.compile(rf"(?<![A-Za-z0-9]){q}(?![A-Za-z0-9_])", re.IGNORECASE)
        hits = [n for n in ggufs if fnmatch(n.lower(), ref.pattern.format(quant=q).lower()) and bounded.search(n)]
        if hits:
            found[q] = min(hits, key=len)
    return found


def projector_file(ref: Ref, remote: hub.Remote) -> str | None:
    """The vision projector: the catalog's pattern, or the repo's mmproj file (f16 preferred)."""
    names = [n for n in remote.files if n.lower().endswith(".gguf") and is_projector(n)]
    if ref.mmproj:
        hits = [n for n in names if fnmatch(n.lower(), ref.mmproj.lower())]
        if not hits:
            raise PullError(f"{ref.repo} has no projector matching {ref.mmproj!r} (projectors: {names or 'none'})")
        return min(hits, key=len)
    if not names:
        return None
    for pref in ("f16", "bf16", "f32"):
        for n in sorted(names, key=len):
            if re.search(rf"(?<![a-z0-9]){pref}(?![a-z0-9])", n.lower()):
                return n
    return min(names, key=len)


def is_embedding(info: gguf.GGUFInfo) -> bool:
    return info.architecture in EMBEDDING_ARCHS or info.arch_value("pooling_type") is not None


def choose_auto(rows: list[quants.Row], ceiling: str) -> quants.Row:
    """The best type that fits, no bigger than `ceiling`; the smallest bigger one when the repo has none under it."""
    fitting = [r for r in rows if r.fits]
    if not fitting:
        return quants.choose(rows)  # raises FitError with the numbers
    top = quants.QUANTS[ceiling][0]
    under = [r for r in fitting if r.bits <= top]
    return max(under, key=lambda r: r.bits) if under else min(fitting, key=lambda r: r.bits)


def plan_pull(
    ref: Ref,
    remote: hub.Remote,
    budget: int,
    source: str,
    token: str | None,
    boards: Sequence[split.Board] = (),
    n_ctx: int = PLAN_CONTEXT,
) -> PullPlan:
    """The file to download: `ref.quant`, or with auto the best quality that fits `budget` (the same table as
    `llmpi-prepare plan`) for one request of `n_ctx` tokens (at most the trained context), or with `boards` (a
    cluster: the head first) the best that can be split across them. PullError with the table when nothing (or not
    the asked-for type) fits."""
    by_quant = quant_files(ref, remote)
    if not by_quant:
        ggufs = sorted(n for n in remote.files if n.lower().endswith(".gguf"))
        raise PullError(
            f"{ref.repo} has no one-file GGUF model matching {ref.pattern!r} in a known quant type "
            f"({', '.join(quants.QUANTS)}); its GGUF files: {', '.join(ggufs) or 'none'}"
        )
    mmproj = projector_file(ref, remote)
    # every quant of a repo has the same shape: read it from the smallest file's header
    info = hub.remote_header(remote, min(by_quant.values(), key=lambda n: remote.files[n].size), token)
    shape = fit.ModelShape.from_gguf(info)
    embedding = ref.kind == "embedding" or (not ref.kind and is_embedding(info))
    kind = "embedding" if embedding else (ref.kind or ("vision" if mmproj else "chat"))
    if embedding:
        mmproj = None
    n_ctx = min(shape.n_ctx_train or n_ctx, n_ctx)
    extra = remote.files[mmproj].size if mmproj else 0
    sizes = {q: remote.files[f].size for q, f in by_quant.items()}
    rows = quants.table_from_sizes(shape, sizes, budget, n_ctx, extra=extra, boards=boards)
    head = (
        f"{ref.repo}@{remote.revision[:12]}: {info.architecture}, trained context {shape.n_ctx_train}, planned for "
        f"{n_ctx} tokens of context; {fit.fmt_bytes(budget)} usable ({source})"
        + (f", across {len(boards)} boards: " + ", ".join(b.name for b in boards) if boards else "")
    )
    try:
        chosen = quants.choose(rows, ref.quant) if ref.quant != "auto" else choose_auto(rows, AUTO_CEILING[kind])
    except (fit.FitError, quants.UnknownQuant) as e:
        raise PullError(
            f"{ref.text} does not fit: {e}\n{head}\n{quants.render(rows, budget, boards=len(boards))}"
        ) from None
    table = head + "\n" + quants.render(rows, budget, chosen.quant, len(boards))
    if boards:
        table += "\n" + quants.split_table(shape, chosen, n_ctx, boards, extra)
    return PullPlan(ref, remote, by_quant[chosen.quant], mmproj, chosen.quant, kind, shape, table, chosen.needed)
