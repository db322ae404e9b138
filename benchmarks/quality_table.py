#!/usr/bin/env python3
"""Accuracy of every strategy against vanilla decoding on the testbed (design.md §7, "no accuracy lost").

Runs the shipped testbed model (``dllm_core/assets/testbed-llada``) on ``--n`` held-out testbed
problems (default 1000, seed 0: the same problems as ``dllm-run eval testbed``) with vanilla
decoding and with each method at its paper defaults, and writes a Markdown table: accuracy, the
paired difference to vanilla (problems gained / lost), model calls per generation, tokens per
step and tokens per second.  Meant for a GPU::

    python benchmarks/quality_table.py --out benchmarks/results/quality_table.md
    python benchmarks/quality_table.py --only vanilla,dual+threshold --n 200 --device cpu

The testbed's sequences are short (about 60 prompt + 64 generated tokens), so window sizes given
in tokens by the papers (FreeCache's 256/256) cover everything there; such rows say so, and a
row with the window scaled to the testbed is added.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "plugins"):  # runnable from a checkout without installing
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

AR_GUIDE = str(ROOT / "dllm_core" / "assets" / "testbed-ar")
GEN_LENGTH = 64


@dataclass(frozen=True)
class Row:
    """One strategy: engine components and generation settings."""

    name: str
    cache: str = "none"
    scheduler: str = "low_confidence"
    guide: str | None = None
    cache_options: dict[str, Any] = field(default_factory=dict)
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    guide_options: dict[str, Any] = field(default_factory=dict)
    block_length: int | None = None
    steps: int | None = None
    note: str = ""


ROWS: tuple[Row, ...] = (
    Row("vanilla", note="LLaDA low-confidence, 1 token/step, no blocks (the reference)"),
    Row("vanilla block 32", block_length=32, note="1 token/step in blocks of 32 (Fast-dLLM's baseline)"),
    Row("threshold", scheduler="threshold", scheduler_options={"threshold": 0.9}, block_length=32,
        note="Fast-dLLM parallel decoding, tau 0.9, no cache"),
    Row("factor", scheduler="factor", scheduler_options={"factor": 1.0}, block_length=32,
        note="Fast-dLLM factor rule, f 1.0, no cache"),
    Row("prefix", cache="prefix", block_length=32, note="Fast-dLLM PrefixCache, 1 token/step"),
    Row("dual", cache="dual", block_length=32, note="Fast-dLLM DualCache, 1 token/step"),
    Row("prefix+threshold", cache="prefix", scheduler="threshold", scheduler_options={"threshold": 0.9},
        block_length=32, note="Fast-dLLM PrefixCache + tau 0.9"),
    Row("dual+threshold", cache="dual", scheduler="threshold", scheduler_options={"threshold": 0.9},
        block_length=32, note="Fast-dLLM DualCache + tau 0.9 (headline)"),
    Row("certainty_prior", scheduler="certainty_prior", note="d2Cache decoding order, 1 token/step, no cache"),
    Row("d2cache", cache="d2cache", scheduler="certainty_prior", note="d2Cache: k 32, p 0.1, sigma 10"),
    Row("freecache 256/256", cache="freecache", cache_options={"left": 256, "right": 256},
        note="FlashDLM eval window: covers the whole testbed sequence (= full recompute)"),
    Row("freecache 16/16", cache="freecache", cache_options={"left": 16, "right": 16},
        note="FreeCache window scaled to the testbed's length"),
    Row("freecache 16/end", cache="freecache", cache_options={"left": 16, "right": 0},
        note="left margin 16, window to the end (the shape of FlashDLM's API default 64/end)"),
    Row("ar guide", guide="ar", guide_options={"model": AR_GUIDE},
        note="Guided Diffusion: testbed-ar verifies drafts (top-2, 0.5), no cache"),
    Row("freecache+ar", cache="freecache", cache_options={"left": 16, "right": 16}, guide="ar",
        guide_options={"model": AR_GUIDE}, note="FlashDLM: FreeCache (scaled) + AR guide"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="diffusion model (default: the shipped testbed model)")
    p.add_argument("--n", type=int, default=1000, help="held-out testbed problems (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="testbed problem seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"])
    p.add_argument("--only", default=None, help="comma-separated row names (default: all)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality_table.md"))
    p.add_argument("--json", default=None, help="also write the raw results (with per-item records) here, "
                   "updated after every row")
    p.add_argument("--from-json", nargs="+", default=None, metavar="JSON",
                   help="render the table from result files of earlier runs (e.g. rows split over processes)")
    return p.parse_args(argv)


def run_row(row: Row, args: argparse.Namespace) -> dict[str, Any]:
    from dllm_core import Engine
    from dllm_core.eval import run_eval
    from dllm_core.eval.testbed import problems

    engine = Engine(model=args.model, cache=row.cache, scheduler=row.scheduler, guide=row.guide,
                    cache_options=row.cache_options, scheduler_options=row.scheduler_options,
                    guide_options=row.guide_options, device=args.device, dtype=args.dtype)
    settings = {"gen_length": GEN_LENGTH, "block_length": row.block_length, "steps": row.steps}
    warm = [p.prompt for p in problems(2, seed=999_999)]
    engine.generate(warm, chat=False, progress=False, **settings)  # warm-up: CUDA init, allocator, kernels
    return run_eval(engine, "testbed", batch_size=args.batch_size, progress=sys.stderr.isatty(),
                    task_options={"n": args.n, "seed": args.seed}, **settings)


def paired(result: dict[str, Any], reference: dict[str, Any]) -> tuple[int, int]:
    """(problems this strategy solves that the reference does not, and the reverse)."""
    ref = {r["id"]: r["correct"] for r in reference["records"]}
    gained = sum(1 for r in result["records"] if r["correct"] and not ref.get(r["id"], False))
    lost = sum(1 for r in result["records"] if not r["correct"] and ref.get(r["id"], False))
    return gained, lost


def ci95(p: float, n: int) -> float:
    return 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def markdown(rows: list[tuple[Row, dict[str, Any] | str]], args: argparse.Namespace, seconds: float) -> str:
    import torch

    results = {row.name: r for row, r in rows if isinstance(r, dict)}
    ref = results.get("vanilla")
    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    device = torch.cuda.get_device_name() if on_gpu else platform.processor()
    lines = [
        "# Testbed quality table",
        "",
        f"Command: `python benchmarks/quality_table.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Model: {args.model or 'dllm_core/assets/testbed-llada'} (gen length {GEN_LENGTH}); {args.n} held-out "
        f"testbed problems (seed {args.seed}), batch size {args.batch_size}; device {device or 'cpu'}, "
        f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; total {seconds:.0f} s.",
        "",
        "Accuracy ± 95% interval; *vs vanilla*: problems gained / lost against vanilla on the same problems "
        "(paired, so a 1-point change shows even when the intervals overlap); *NFE*: model calls per "
        "generation (a batch is one generation); *tok/step*: generated tokens up to EOS per sequence per "
        "step; *tok/s*: generated tokens up to EOS over generation wall time (batched, so not comparable "
        "with batch-1 paper numbers).",
        "",
        "| strategy | accuracy | vs vanilla | NFE | tok/step | tok/s | what |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, r in rows:
        if isinstance(r, str):
            lines.append(f"| {row.name} | failed | | | | | {row.note}: {r} |")
            continue
        batches = max(1, math.ceil(r["n"] / args.batch_size))
        vs = "—" if ref is None or row.name == "vanilla" else "+{} / −{}".format(*paired(r, ref))
        lines.append(f"| {row.name} | {100 * r['accuracy']:.1f} ± {100 * ci95(r['accuracy'], r['n']):.1f} | {vs} | "
                     f"{r['nfe'] / batches:.1f} | {r['tokens_per_step']:.2f} | {r['tokens_per_second']:.0f} | "
                     f"{row.note} |")
    lines += ["", "Configurations (resolved by the engine):", ""]
    for row, r in rows:
        if isinstance(r, dict):
            lines.append(f"- {row.name}: `{json.dumps(r['config'].get('strategy', {}))}`, block "
                         f"{r['config'].get('block_length')}, steps {r['config'].get('steps')}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = None if args.only is None else {s.strip() for s in args.only.split(",")}
    rows = [r for r in ROWS if wanted is None or r.name in wanted]
    if wanted and len(rows) != len(wanted):
        known = ", ".join(r.name for r in ROWS)
        raise SystemExit(f"unknown row(s) in --only: {sorted(wanted - {r.name for r in rows})}; known: {known}")
    t0 = time.time()
    done: list[tuple[Row, dict[str, Any] | str]] = []
    if args.from_json:
        merged: dict[str, Any] = {}
        for path in args.from_json:
            merged.update(json.loads(Path(path).read_text()))
        done = [(r, merged[r.name]) for r in rows if r.name in merged]
        seconds = sum(res.get("generation_seconds", 0.0) for _, res in done if isinstance(res, dict))
        Path(args.out).write_text(markdown(done, args, seconds))
        print(Path(args.out).read_text())
        return 0
    for row in rows:
        try:
            result = run_row(row, args)
            print(f"{row.name}: accuracy {result['accuracy']:.4f}, {result['tokens_per_step']:.2f} tok/step, "
                  f"{result['tokens_per_second']:.0f} tok/s", flush=True)
            done.append((row, result))
        except Exception as exc:  # noqa: BLE001 - one failing strategy must not hide the others' rows
            print(f"{row.name}: FAILED {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            done.append((row, f"{type(exc).__name__}: {exc}".replace("|", "/").replace("\n", " ")[:300]))
        if args.json:
            Path(args.json).write_text(json.dumps({r.name: res for r, res in done}, indent=1) + "\n")
    text = markdown(done, args, time.time() - t0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0 if all(isinstance(r, dict) for _, r in done) else 1


if __name__ == "__main__":
    sys.exit(main())
