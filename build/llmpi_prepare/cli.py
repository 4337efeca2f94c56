"""llmpi-prepare: from a Hugging Face repo to a GGUF that fits the board.

    llmpi-prepare plan REPO [--revision R] [--ram 8G | --target pi5-8gb] [--ctx 4096] [--quant auto]
    llmpi-prepare download REPO --out DIR [...]     (plan first; nothing is downloaded when it does not fit)
    llmpi-prepare run REPO|NAME --out DIR [--name NAME] [--keep] [--prebuilt]
                                   plan, download, convert, quantize, verify; writes NAME.gguf + NAME.json
                                   (--prebuilt: a catalog entry's ready GGUF instead; automatic when the pinned
                                   converter cannot convert the model, e.g. LLaVA 1.6)
    llmpi-prepare presets          the catalog (service/catalog.toml): name, kind, ready GGUF repo, boards, why

NAME is a catalog entry. Entries without a transformers repo have ready GGUF files only: `plan` shows their fit
table, `download` and `run` fetch them as the appliance pulls them (llmpi.models.pull: the quant that
fits, sha256-checked, with a manifest), e.g. for the bake stage; so does `run --prebuilt`, which also verifies them
with llama-server.

Tokens: HF_TOKEN or HF_TOKEN_FILE. Hub: HF_ENDPOINT (default the public hub).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from llmpi.models import catalog, pull
from llmpi.models.hub import HubError
from llmpi.plan import fit, quants, split

from . import convert, hub, pipeline, plan


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmpi-prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("presets")
    for name in ("plan", "download", "run"):
        s = sub.add_parser(name)
        s.add_argument("repo", help="a catalog name, or a Hugging Face repo id, e.g. Qwen/Qwen2.5-1.5B-Instruct")
        s.add_argument("--revision", default=None, help="branch, tag or commit (default: main, pinned to its commit)")
        s.add_argument("--ram", default=None, help="memory of the target, e.g. 8G")
        s.add_argument("--target", default=None, choices=sorted(plan.TARGETS), help="a named board")
        s.add_argument("--ctx", type=int, default=4096, help="context to plan for (tokens)")
        s.add_argument("--quant", default="auto", help="quantization type, or auto (best that fits)")
        s.add_argument(
            "--workers",
            default=None,
            help="plan for a cluster: this board (--ram/--target) as the head plus workers, each memory a size or "
            "a named board, e.g. --workers 8G,pi5-8gb (README: Several Pis)",
        )
        if name in ("download", "run"):
            s.add_argument("--out", required=True, type=Path, help="output directory")
        if name == "run":
            s.add_argument("--name", default=None, help="file name (without .gguf) of the result")
            s.add_argument("--keep", action="store_true", help="keep the download and the f16 intermediate")
            s.add_argument("--prebuilt", action="store_true", help="use the catalog entry's ready GGUF files")
    return p


def say(message: str) -> None:
    print(message, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "presets":
        print(presets(catalog.load()))
        return 0
    try:
        preset = catalog.load().get(args.repo)
        repo, revision = (preset.repo, args.revision or preset.revision) if preset else (args.repo, args.revision)
        quant = args.quant if args.quant.lower() == "auto" else quants.normalize(args.quant)
        memory, source = plan.memory_for(args.ram, args.target)
        workers = plan.worker_boards(args.workers) if args.workers else []
        token = hub.token_from_env()
        if preset and not preset.repo:
            pull_ready_gguf(args, preset, quant, memory, source, token, workers)
            return 0
        if args.command == "run":
            run(args, preset, repo, revision, quant, memory, source, token)
            return 0
        model = hub.inspect(repo, revision, token)
        chosen = plan.make_plan(model, memory, source, n_ctx=args.ctx, quant=quant, workers=workers)
        print(chosen.report())
        c = chosen.chosen
        print(f"chosen: {c.quant} ({c.size / 1e9:.2f} GB file, {c.needed / 1e9:.2f} GB memory)")
        if args.command == "download":
            hub.download(model, args.out, token)
            print(f"downloaded {model.repo_id}@{model.revision[:12]} to {args.out}")
    except (hub.PrepareError, HubError, fit.FitError, quants.UnknownQuant, ValueError) as e:
        print(f"llmpi-prepare: {e}", file=sys.stderr)
        return 1
    return 0


def pull_ready_gguf(
    args: argparse.Namespace,
    entry: catalog.Entry,
    quant: str,
    memory: int,
    source: str,
    token: str | None,
    workers: Sequence[split.Board] = (),
) -> None:
    """A catalog entry with ready GGUF files only: the appliance's own pull (llmpi.models.pull, the same fit table as
    `llmpi models pull`); `plan` prints the table, `download` and `run` put the files and the manifest in --out."""
    p = pipeline.plan_ready(entry, quant, memory, source, token, args.ctx, workers)
    print(p.table)
    if args.command == "plan":
        return
    pull.download(p, args.out, token, say, write_progress=False)
    say(
        f"ready: {args.out / (p.stem + '.gguf')} ({p.quant}); serve it with LLMPI_MODEL={args.out / (p.stem + '.gguf')}"
    )


def presets(entries: dict[str, catalog.Entry]) -> str:
    """The catalog as a table: name, kind, ready GGUF repo, boards; under each, why this one and how
    llmpi-prepare makes it (converted from its transformers repo, or its ready GGUF files only)."""
    lines = [f"{'name':26} {'kind':10} {'ready GGUF files':40} boards"]
    for e in entries.values():
        source = (
            f"converts {e.repo}"
            if e.repo
            else f"ready GGUF only: fetched as the appliance pulls it (LLMPI_MODEL={e.name})"
        )
        lines += [f"{e.name:26} {e.kind:10} {e.gguf_repo:40} {e.boards}", f"{'':26} {e.why}", f"{'':26} {source}"]
    return "\n".join(lines)


def run(
    args: argparse.Namespace,
    preset: catalog.Entry | None,
    repo: str,
    revision: str | None,
    quant: str,
    memory: int,
    source: str,
    token: str | None,
) -> None:
    prebuilt = bool(args.prebuilt)
    if preset and not prebuilt:
        try:
            convert.check_supported(preset.architecture, convert.llama_cpp_dir())
        except hub.PrepareError as e:
            if not preset.gguf_repo:
                raise
            say(f"{e}; using the catalog entry's ready GGUF files from {preset.gguf_repo}")
            prebuilt = True
    if prebuilt:
        if not preset:
            raise hub.PrepareError("--prebuilt needs a catalog name (see: llmpi-prepare presets)")
        pipeline.run_prebuilt(
            preset, memory, source, args.out, quant=quant, n_ctx=args.ctx, token=token, name=args.name, say=say
        )
        return
    name = args.name or (f"{preset.name}.{{quant}}" if preset else None)
    pipeline.run(
        repo,
        revision,
        memory,
        source,
        args.out,
        quant=quant,
        n_ctx=args.ctx,
        token=token,
        keep=args.keep,
        name=name,
        say=say,
    )


if __name__ == "__main__":
    sys.exit(main())
