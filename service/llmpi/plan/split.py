"""One model across several boards: how many layers each board holds, and the flags that tell llama-server so.

Ports. A worker publishes two: PORT (default 50052) for the RPC server and PORT+1 for its description, each
through a spiped decrypting end (llmpi.cluster.channels). The head runs one spiped encrypting end per worker port,
listening on its own loopback (TUNNEL_BASE + 2 i and + 1), and llama-server connects to those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import fit

TUNNEL_BASE = 51000  # the head's loopback ends of the tunnels: 51000 + 2 i (RPC), 51001 + 2 i (description)
# the RPC server's own use beside the layers it holds: its process and its compute buffers (one micro-batch of
# activations for its share of the graph)
WORKER_OVERHEAD = 48 * fit.MiB


@dataclass(frozen=True)
class Board:
    """What one board offers the model: memory for layers, and what the fit table says about it."""

    name: str
    budget: int  # bytes usable (memory minus reserve)
    source: str  # where that number came from
    arch: str = ""
    threads: int = 0


@dataclass(frozen=True)
class Split:
    """Layers per board: the head's first, then each worker's in LLMPI_WORKERS order."""

    layers: tuple[int, ...]
    per_layer: int  # bytes a layer takes with its KV cache
    head_fixed: int  # bytes the head needs beside its layers
    boards: tuple[Board, ...]

    @property
    def worker_layers(self) -> int:
        return sum(self.layers[1:])

    def table(self) -> str:
        return board_table(self.boards, self.layers, self.per_layer, self.head_fixed)


HEAD = "this board (head)"


def with_head(budget: int, source: str, workers: Sequence[Board]) -> tuple[Board, ...]:
    """The boards of a plan: this one (the head) first, then the workers; none when there are no workers."""
    return (Board(HEAD, budget, source), *workers) if workers else ()


def rpc_tunnel(i: int) -> int:
    return TUNNEL_BASE + 2 * i


def info_tunnel(i: int) -> int:
    return TUNNEL_BASE + 2 * i + 1


def parameters(shape: fit.ModelShape) -> int:
    """The model's parameters: the GGUF's count when it is one (it holds at least the token embeddings), else
    estimated from the shape (attention Q, K, V, O and a gated feed-forward a layer, plus the embeddings)."""
    embeddings = shape.n_vocab * shape.n_embd
    if shape.n_params > embeddings:
        return shape.n_params
    n_ff = shape.n_ff or 4 * shape.n_embd
    per_layer = shape.n_embd * (2 * shape.n_embd + shape.k_width + shape.v_width) + 3 * shape.n_embd * n_ff
    return max(1, shape.n_layer * per_layer + embeddings)


def layer_bytes(shape: fit.ModelShape, est: fit.Estimate) -> tuple[int, int]:
    """(bytes of one repeating layer with its share of the KV cache, bytes that stay on the head whatever the
    split). The token embeddings and the output weights stay on the head (server_args); their size is the
    embedding matrix's share of the parameters."""
    n_layer = max(1, shape.n_layer)
    embedding_params = shape.n_vocab * shape.n_embd
    embeddings = int(shape.weights_bytes * min(0.95, embedding_params / parameters(shape)))
    per_layer = (shape.weights_bytes - embeddings + est.kv_cache) // n_layer
    return per_layer, est.total - per_layer * n_layer


def board_table(boards: Sequence[Board], layers: Sequence[int], per_layer: int, head_fixed: int) -> str:
    """One line a board: what it has, what its share needs."""
    lines = []
    for i, (b, n) in enumerate(zip(boards, layers, strict=True)):
        need = n * per_layer + (head_fixed if i == 0 else WORKER_OVERHEAD)
        lines.append(
            f"  {b.name}: {n} layers, needs {fit.fmt_bytes(need)} of {fit.fmt_bytes(b.budget)}"
            + (f" ({b.source})" if b.source else "")
        )
    return "\n".join(lines)


def split_layers(shape: fit.ModelShape, est: fit.Estimate, boards: Sequence[Board]) -> Split:
    """Layers per board in proportion to the memory each has left for layers (the head's after the embeddings,
    output, compute buffers, prompt cache and whatever else it holds); FitError with the table per board when the
    boards together cannot hold the model."""
    per_layer, head_fixed = layer_bytes(shape, est)
    n_layer = max(1, shape.n_layer)
    room = [boards[0].budget - head_fixed] + [b.budget - WORKER_OVERHEAD for b in boards[1:]]
    capacity = [max(0, r // max(1, per_layer)) for r in room]
    if room[0] < 0 or sum(capacity) < n_layer:
        raise fit.FitError(
            f"the model does not fit across {len(boards)} boards: {n_layer} layers of about "
            f"{fit.fmt_bytes(per_layer)} each (with their KV cache), and the head needs "
            f"{fit.fmt_bytes(head_fixed)} beside its layers ({est.breakdown()} in all); room for "
            f"{sum(capacity)} layers:\n"
            + board_table(boards, [min(c, n_layer) for c in capacity], per_layer, head_fixed)
            + "\nAdd a board, use a smaller model or quantization, or a smaller LLMPI_CTX_SIZE / LLMPI_PARALLEL."
        )
    total = sum(capacity)
    layers = [min(c, n_layer * c // total) for c in capacity]
    # the layers rounding left over: one each to the boards with the largest remainders (that have room)
    order = sorted(range(len(boards)), key=lambda k: (n_layer * capacity[k] % total, capacity[k]), reverse=True)
    while sum(layers) < n_layer:
        for i in order:
            if sum(layers) < n_layer and layers[i] < capacity[i]:
                layers[i] += 1
    return Split(tuple(layers), per_layer, head_fixed, tuple(boards))


# the output layer's weights (or, with tied embeddings, the token embeddings it reuses) stay in the head's memory
KEEP_ON_HEAD = "^(token_embd|output)[.]weight$=CPU"


def server_args(split: Split, n_workers: int) -> list[str]:
    """llama-server's cluster options: the tunnels as RPC servers, the workers' layers (the last ones; the head
    keeps the first), their shares, no automatic fit, and the head's own layers in the layout the workers use (no
    repacking; docs/cluster.md: identical output).

    llama.cpp counts the output layer as one more layer after the last: `--n-gpu-layers N` offloads it and N - 1
    repeating layers, to the last device. So N is the workers' layers + 1, the last worker's share has the output
    layer's 1, and the output weights are kept on the head (`--override-tensor`): else the last worker would hold a
    copy of the embedding matrix (Gemma 3 270M: 160 MiB) and send the logits over the network at every token
    (docs/cluster.md "Speed": 1 MB a token, 0.6 times the speed through spiped). A vision projector stays on the
    head too (upstream would put it on the first RPC device)."""
    shares = [*split.layers[1:]]
    shares[-1] += 1
    return [
        "--rpc",
        ",".join(f"127.0.0.1:{rpc_tunnel(i)}" for i in range(n_workers)),
        "--fit",
        "off",
        "--n-gpu-layers",
        str(split.worker_layers + 1),
        "--tensor-split",
        ",".join(str(n) for n in shares),
        "--override-tensor",
        KEEP_ON_HEAD,
        "--no-mmproj-offload",  # a vision model's projector on the head, where the fit counts it
        "--no-repack",
    ]
