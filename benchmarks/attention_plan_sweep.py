"""Time partial_attention under plan overrides: which split count / head slicing / row tile is fastest.

The CUDA launcher reads its DLLM_CORE_ATTN_* overrides at every call, so one process can time each
setting in turn.  Shapes are MODEL:B:q:T (models as in ops_bench.py), or the grid of --models, --batch,
--q and --T (default: ops_bench's 48 shapes); settings are semicolon lists of NAME=VALUE pairs
separated by commas ("auto" = no override).  Times use ops_bench's graph timer
(CUDA-graph replays, L2 flushed); the plan each setting produced is printed beside it.

    PYTHONPATH=.:plugins python3 benchmarks/attention_plan_sweep.py \\
        --shapes LLaDA-8B:1:128:512,Dream-7B:1:128:512 --settings "auto;DLLM_CORE_ATTN_SPLITS=1;DLLM_CORE_ATTN_SPLITS=2"
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ops_bench  # noqa: E402
from ops_bench import MODELS, attention_inputs, attention_plan, graph_us, ops, plan_str  # noqa: E402


def parse_setting(text: str) -> dict[str, str]:
    if text.strip() in ("", "auto"):
        return {}
    pairs = [p.split("=", 1) for p in text.split(",")]
    bad = [p for p in pairs if len(p) != 2 or not p[0].startswith("DLLM_CORE_ATTN_")]
    if bad:
        raise SystemExit(f"bad setting {text!r}: expected DLLM_CORE_ATTN_NAME=VALUE pairs separated by commas")
    return {k.strip(): v.strip() for k, v in pairs}


def sweep_shape(model: str, B: int, n: int, T: int, settings: list[dict[str, str]], probs: bool) -> list[dict]:
    q, k, v, mask, scale = attention_inputs(model, B, n, T)
    rows = []
    for env in settings:
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            row = dict(model=model, B=B, q=n, T=T, setting=env or "auto")
            row["plan"] = attention_plan(q, k, v, mask, scale, probs)
            row["us"] = graph_us(lambda: ops.partial_attention(q, k, v, mask, scale, probs))
        finally:
            for name, old in saved.items():
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old
        rows.append(row)
        print(f"{model} B{B} q{n} T{T} probs={int(probs)} {json.dumps(row['setting'])}: {row['us']:.1f} us "
              f"[{plan_str(row['plan'])}{' pdl' if row['plan'].get('pdl') else ''}]", flush=True)
    return rows


def print_table(path: str) -> None:
    """One line per (model, B, q, T, probabilities) of a saved sweep, one column per setting (us; * where the
    plan ran session 11's cluster kernel, removed since): the sweep's rows side by side, no GPU needed."""
    with open(path) as f:
        rows = json.load(f)["rows"]
    table: dict[tuple, dict[str, str]] = {}
    for r in rows:
        env = r["setting"]  # "auto" or {NAME: VALUE}
        setting = env if isinstance(env, str) else ",".join(f"{k.removeprefix('DLLM_CORE_ATTN_')}={v}"
                                                            for k, v in env.items())
        key = (r["model"], r["B"], r["q"], r["T"], r["plan"].get("probs", 0))
        table.setdefault(key, {})[setting] = f"{r['us']:.1f}" + ("*" if r["plan"].get("cluster", 0) else "")
    names = list(dict.fromkeys(n for v in table.values() for n in v))
    print("| model | B | q | T | probs | " + " | ".join(names) + " |")
    print("|---" * (5 + len(names)) + "|")
    for key, cells in table.items():
        print("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells.get(n, "-") for n in names) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda text: [int(x) for x in text.split(",")]
    ap.add_argument("--shapes", help="comma list of MODEL:B:q:T (default: the grid below)")
    ap.add_argument("--models", default=",".join(MODELS), help="grid: comma list of models")
    ap.add_argument("--batch", type=ints, default=[1, 16], help="grid: batch sizes")
    ap.add_argument("--q", type=ints, default=[32, 64, 128], help="grid: query-row counts")
    ap.add_argument("--T", type=ints, default=[512, 1024, 2048, 4096], help="grid: key counts")
    ap.add_argument("--settings", default="auto", help="semicolon list of settings (NAME=VALUE,...; auto)")
    ap.add_argument("--probs", choices=("0", "1", "both"), default="both", help="time without / with probabilities")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--table", metavar="JSON", help="print a saved sweep (--out) as a table and exit")
    ops_bench.add_flush_arg(ap)
    args = ap.parse_args()
    if args.table:
        print_table(args.table)
        return
    ops_bench.FLUSH = args.flush
    settings = [parse_setting(s) for s in args.settings.split(";")]
    props = torch.cuda.get_device_properties(0)
    print(f"command: {' '.join(sys.argv)}\nGPU: {props.name}  torch {torch.__version__}  timer: graph ({args.flush} flush)")
    ops_bench.TIMER = "graph"
    results = []
    specs = args.shapes.split(",") if args.shapes else [
        f"{m}:{B}:{n}:{T}" for m in args.models.split(",") for B in args.batch for T in args.T for n in args.q]
    for spec in specs:
        model, B, n, T = spec.split(":")
        if model not in MODELS:
            raise SystemExit(f"unknown model {model!r}; known: {list(MODELS)}")
        for probs in ((False, True) if args.probs == "both" else (args.probs == "1",)):
            results += sweep_shape(model, int(B), int(n), int(T), settings, probs)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(command=" ".join(sys.argv), gpu=props.name, flush=args.flush, rows=results), f, indent=1)


if __name__ == "__main__":
    main()
