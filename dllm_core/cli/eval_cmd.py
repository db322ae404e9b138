"""``dllm-run eval TASK``: accuracy and speed of a model + strategy on a benchmark or the testbed.

Examples::

    dllm-run eval testbed --n 1000 --batch-size 100                     # shipped model, vanilla
    dllm-run eval testbed --cache dual --scheduler threshold --block-length 32
    dllm-run eval gsm8k --data gsm8k_test.jsonl --model GSAI-ML/LLaDA-8B-Instruct --limit 100
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .options import add_strategy_arguments, engine_kwargs, parse_kv


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..eval.tasks import task_names

    p = sub.add_parser("eval", help="evaluate accuracy and speed on a task",
                       description="Evaluate a model and decoding strategy on a task: accuracy, tokens/s, "
                                   "tokens/step, model calls.  The real benchmarks need --data; the testbed "
                                   "generates its held-out problems (--n, --seed).",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("task", choices=task_names(), help="task to run")
    p.add_argument("--data", help="benchmark file (.jsonl or .jsonl.gz); required except for testbed")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N items")
    p.add_argument("--n", type=int, default=1000, help="testbed: number of held-out problems (default: 1000)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (default: 1)")
    p.add_argument("--task-opt", action="append", metavar="KEY=VALUE",
                   help="task option, e.g. num_fewshot=4, fewshot_path=PATH (repeatable)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write the full result (with per-item records) as JSON to PATH, or stdout without PATH")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    add_strategy_arguments(p)
    p.set_defaults(func=run)


def task_options(args: argparse.Namespace) -> dict[str, Any]:
    """--task-opt values (JSON-decoded when possible), plus --n/--seed for testbed and --chat."""
    opts: dict[str, Any] = {}
    for key, value in parse_kv(args.task_opt, "--task-opt").items():
        try:
            opts[key] = json.loads(value)
        except ValueError:
            opts[key] = value
    if args.task == "testbed":
        opts.setdefault("n", args.n)
        opts.setdefault("seed", args.seed)
    if args.chat is not None:
        opts.setdefault("chat", args.chat)
    return opts


def run(args: argparse.Namespace) -> int:
    from ..engine import Engine
    from ..errors import OptionError
    from ..eval import get_task, run_eval, summary_line

    if args.batch_size < 1:
        raise OptionError(f"--batch-size must be >= 1, got {args.batch_size}")
    task = get_task(args.task)
    if task.needs_data and not args.data:
        raise OptionError(f"task {args.task!r} needs --data PATH (its benchmark file)")
    engine = Engine(**engine_kwargs(args))
    result = run_eval(engine, task, data_path=args.data, limit=args.limit, batch_size=args.batch_size,
                      gen_length=args.gen_length, block_length=args.block_length, steps=args.steps,
                      progress=args.progress and sys.stderr.isatty(), temperature=args.temperature,
                      seed=args.seed, task_options=task_options(args))
    result["command"] = "dllm-run eval " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["eval"] else None
    if args.json == "-":
        print(json.dumps(result, indent=1))
    else:
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(summary_line(result))
    return 0
