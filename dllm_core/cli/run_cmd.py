"""``dllm-run [run] PROMPT``: generate from a prompt given as an argument, a file or stdin."""

from __future__ import annotations

import argparse
import json
import sys

from .options import add_strategy_arguments, engine_kwargs, generation_kwargs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="generate text (the default command)",
                       description="Generate a continuation for each prompt.")
    p.add_argument("prompt", nargs="?", help="the prompt; omitted: read --file, else stdin")
    p.add_argument("-f", "--file", help="read prompts from this file, one per line ('-' for stdin)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (default: 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object per batch")
    p.add_argument("--trace", action="store_true", help="record which columns each step committed (JSON)")
    add_strategy_arguments(p)
    p.set_defaults(func=run)


def _prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    if args.file and args.file != "-":
        with open(args.file, encoding="utf-8") as fh:
            return [line.rstrip("\n") for line in fh if line.strip()]
    if sys.stdin is None or sys.stdin.isatty():
        raise SystemExit("error: give a prompt, --file PATH, or pipe prompts on stdin")
    text = sys.stdin.read()
    return [line for line in text.splitlines() if line.strip()] if args.file == "-" else [text.rstrip("\n")]


def run(args: argparse.Namespace) -> int:
    from ..engine import Engine

    if args.batch_size < 1:
        raise SystemExit(f"error: --batch-size must be >= 1, got {args.batch_size}")
    prompts = _prompts(args)
    engine = Engine(**engine_kwargs(args))
    settings = generation_kwargs(args)
    for i in range(0, len(prompts), args.batch_size):
        batch = prompts[i:i + args.batch_size]
        res = engine.generate(batch, chat=args.chat, trace=args.trace, **settings)
        if args.json:
            obj = {"text": res.texts[0] if len(batch) == 1 else res.texts, "token_ids": res.token_ids,
                   "nfe": res.nfe, "steps": res.steps, "seconds": round(res.seconds, 6),
                   "generated_tokens": res.generated_tokens, "tokens_per_second": res.tokens_per_second, "stats": res.stats,
                   "config": res.config}
            if res.trace is not None:
                obj["trace"] = [t.__dict__ for t in res.trace]
            print(json.dumps(obj))
        else:
            for text in res.texts:
                print(text)
            print(f"[{res.generated_tokens} tokens, {res.steps} steps, {res.nfe} model calls, "
                  f"{res.seconds:.2f} s]", file=sys.stderr)
    return 0
