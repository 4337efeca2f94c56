"""Does it fit, and in which quantization? Answered from the hub's metadata, before any weight is downloaded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmpi.host import hardware
from llmpi.plan import fit, quants, split

from .hfshape import shape_from_config
from .hub import RemoteModel

# usable RAM (MemTotal as Raspberry Pi OS reports it) of the boards people run llmpi on
TARGETS: dict[str, int] = {
    "pi4-2gb": int(1.8 * fit.GiB),
    "pi4-4gb": int(3.7 * fit.GiB),
    "pi4-8gb": int(7.6 * fit.GiB),
    "pi5-2gb": int(1.9 * fit.GiB),
    "pi5-4gb": int(3.9 * fit.GiB),
    "pi5-8gb": int(7.9 * fit.GiB),
    "pi5-16gb": int(15.8 * fit.GiB),
}


def memory_for(ram: str | None = None, target: str | None = None) -> tuple[int, str]:
    """(bytes, description) of the memory to plan for: --ram, --target, or this machine."""
    if ram and target:
        raise ValueError("give --ram or --target, not both")
    if ram:
        return fit.parse_size(ram), f"--ram {ram}"
    if target:
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
        return TARGETS[target], target
    mem = hardware.detect().memory
    return mem.total, f"this machine ({mem.source})"


def worker_boards(text: str, reserve: int = fit.DEFAULT_RESERVE) -> list[split.Board]:
    """--workers 8G,pi5-8gb: each worker's memory (a size or a named board), less the reserve each keeps."""
    boards = []
    for i, item in enumerate(p.strip() for p in text.split(",") if p.strip()):
        memory, source = memory_for(None, item) if item in TARGETS else memory_for(item, None)
        boards.append(split.Board(f"worker {i + 1}", memory - reserve, f"{source} minus a reserve"))
    if not boards:
        raise ValueError("--workers: give each worker's memory, e.g. --workers 8G,pi5-8gb")
    return boards


@dataclass(frozen=True)
class Plan:
    model: RemoteModel
    rows: list[quants.Row]
    chosen: quants.Row
    memory: int
    budget: int
    memory_source: str
    n_ctx: int
    shape: fit.ModelShape
    boards: tuple[split.Board, ...] = ()  # with --workers: this board first, then the workers

    def report(self) -> str:
        m = self.model
        head = (
            f"{m.repo_id}@{m.revision[:12]}: {m.n_params / 1e9:.2f} B parameters, "
            f"{self.n_ctx} tokens of context; memory {fit.fmt_bytes(self.memory)} ({self.memory_source}) "
            f"minus {fit.fmt_bytes(self.memory - self.budget)} reserve"
        )
        if not self.boards:
            return head + "\n" + quants.render(self.rows, self.budget, self.chosen.quant)
        return (
            head
            + f", and {len(self.boards) - 1} workers\n"
            + quants.render(self.rows, self.budget, self.chosen.quant, len(self.boards))
            + "\n"
            + quants.split_table(self.shape, self.chosen, self.n_ctx, self.boards)
        )


def make_plan(
    model: RemoteModel,
    memory: int,
    memory_source: str,
    n_ctx: int = 4096,
    quant: str = "auto",
    reserve: int = fit.DEFAULT_RESERVE,
    mmproj_bytes: int = 0,
    workers: Sequence[split.Board] = (),
) -> Plan:
    """Raises fit.FitError (with the table's numbers) when nothing, or not the requested type, fits. With workers
    (llmpi.plan.split: several boards, one model), a type fits when its layers can be split across this board and
    them, as the head's launcher splits them."""
    shape = shape_from_config(model.config, model.n_params)
    budget = memory - reserve
    boards = split.with_head(budget, memory_source, workers)
    sizes = quants.estimated_sizes(model.n_params)
    rows = quants.table_from_sizes(shape, sizes, budget, n_ctx, extra=mmproj_bytes, boards=boards)
    try:
        chosen = quants.choose(rows, quant)
    except fit.FitError as e:
        table = quants.render(rows, budget, boards=len(boards))
        whom = f"{fit.fmt_bytes(memory)} ({memory_source})" + (f" and {len(workers)} workers" if workers else "")
        raise fit.FitError(f"{model.repo_id} does not fit in {whom}: {e}\n{table}") from None
    return Plan(model, rows, chosen, memory, budget, memory_source, n_ctx, shape, boards)
