"""llmpi-prepare: from a Hugging Face repo to a GGUF that fits the board.

    llmpi-prepare plan REPO [--revision R] [--ram 8G | --target pi5-8gb] [--ctx 4096] [--quant auto]
    llmpi-prepare download REPO --out DIR [...]     (plan first; nothing is downloaded when it does not fit)
    llmpi-prepare run REPO --out DIR [--name NAME] [--keep]
                                   plan, download, convert, quantize, verify; writes NAME.gguf + NAME.json

Tokens: HF_TOKEN or HF_TOKEN_FILE. Hub: HF_ENDPOINT (default the public hub).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from llmpi import fit

from . import hub, pipeline, plan, quants


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmpi-prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("plan", "download", "run"):
        s = sub.add_parser(name)
        s.add_argument("repo", help="Hugging Face repo id, e.g. mistralai/Mistral-7B-Instruct-v0.3")
        s.add_argument("--revision", default=None, help="branch, tag or commit (default: main, pinned to its commit)")
        s.add_argument("--ram", default=None, help="memory of the target, e.g. 8G")
        s.add_argument("--target", default=None, choices=sorted(plan.TARGETS), help="a named board")
        s.add_argument("--ctx", type=int, default=4096, help="context to plan for (tokens)")
        s.add_argument("--quant", default="auto", help="quantization type, or auto (best that fits)")
        if name in ("download", "run"):
            s.add_argument("--out", required=True, type=Path, help="output directory")
        if name == "run":
            s.add_argument("--name", default=None, help="file name (without .gguf) of the result")
            s.add_argument("--keep", action="store_true", help="keep the download and the f16 intermediate")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        quant = args.quant if args.quant.lower() == "auto" else quants.normalize(args.quant)
        memory, source = plan.memory_for(args.ram, args.target)
        token = hub.token_from_env()
        if args.command == "run":
            pipeline.run(
                args.repo,
                args.revision,
                memory,
                source,
                args.out,
                quant=quant,
                n_ctx=args.ctx,
                token=token,
                keep=args.keep,
                name=args.name,
                say=lambda m: print(m, flush=True),
            )
            return 0
        model = hub.inspect(args.repo, args.revision, token)
        p = plan.make_plan(model, memory, source, n_ctx=args.ctx, quant=quant)
        print(p.report())
        print(f"chosen: {p.chosen.quant} ({p.chosen.size / 1e9:.2f} GB file, {p.chosen.needed / 1e9:.2f} GB memory)")
        if args.command == "download":
            hub.download(model, args.out, token)
            print(f"downloaded {model.repo_id}@{model.revision[:12]} to {args.out}")
    except (hub.PrepareError, fit.FitError, quants.UnknownQuant, ValueError) as e:
        print(f"llmpi-prepare: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
