"""Where the time of one CUDA partial_attention call goes, kernel by kernel (GPU only; not collected by pytest).

    python3 benchmarks/attention_breakdown.py --out breakdown.json [--shapes LLaDA-8B:1:64:1024,...]

For each shape (model:B:q:T, bf16, all keys attendable) and each chain mode (programmatic dependent
launch on and off, `DLLM_CORE_ATTN_PDL`), with and without probabilities:
- the kernels of one call from `torch.profiler` (CUPTI timestamps), the L2 cache flushed before
  every call: each kernel's start relative to the call's first kernel and its duration, medians
  over `--calls` calls.  With PDL a dependent kernel starts early and waits in `griddepcontrol.wait`,
  so its duration includes that wait; with PDL off the durations are the kernels' own and the gaps
  between them are the launch boundaries;
- the call's time from the benchmark's graph timer (`ops_bench.graph_us`), and the same timer on one
  1-element kernel: the fixed cost every call pays in that measurement however little it does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import ops_bench  # noqa: E402
import dllm_core.ops as ops  # noqa: E402

DEFAULT_SHAPES = ("LLaDA-8B:1:32:512,LLaDA-8B:1:64:1024,LLaDA-8B:1:128:1024,LLaDA-8B:1:64:4096,"
                  "Dream-7B:1:32:1024,Dream-7B:1:64:2048,Dream-7B:1:32:4096,LLaDA-8B:16:32:1024")


def kernel_trace(fn, calls: int) -> list[list[tuple[str, float, float]]]:
    """Per call: (kernel name, start us relative to the call's first kernel, duration us), flush excluded."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(calls):
            ops_bench.flush_l2()
            fn()
        torch.cuda.synchronize()
    kernels = sorted(((e.name, e.time_range.start, e.time_range.end) for e in prof.events()
                      if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start),
                     key=lambda k: k[1])
    out, cur = [], []
    for name, start, end in kernels:
        if "attn" in name:
            cur.append((name, start, end))
        elif cur:  # the flush or the marker: the call before it is complete
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    calls_out = []
    for call in out:
        t0 = call[0][1]
        calls_out.append([(short(n), s - t0, e - s) for n, s, e in call])
    return calls_out


def short(name: str) -> str:
    for key in ("attn_main_kernel", "attn_combine_kernel", "attn_probs_kernel", "attn_wgmma_kernel",
                "attn_scores_kernel"):
        if key in name:
            return key.replace("_kernel", "")
    return name[:40]


def summarise(calls: list[list[tuple[str, float, float]]]) -> dict:
    """Median start/duration per kernel position, and the call's span (first start to last end)."""
    n = min(len(c) for c in calls)
    names = [calls[0][i][0] for i in range(n)]
    rows = []
    for i in range(n):
        rows.append(dict(kernel=names[i], start_us=statistics.median(c[i][1] for c in calls),
                         dur_us=statistics.median(c[i][2] for c in calls)))
    span = statistics.median(max(s + d for _, s, d in c) for c in calls)
    return dict(kernels=rows, span_us=span)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated model:B:q:T")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--out", default=None)
    ops_bench.add_flush_arg(ap)
    args = ap.parse_args()
    ops_bench.FLUSH = args.flush
    if not torch.cuda.is_available():
        sys.exit("attention_breakdown.py needs a CUDA device")
    print("command:", " ".join(shlex.quote(a) for a in sys.argv))
    print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__, "|", platform.node())
    tiny = torch.zeros(1, device="cuda")
    fixed = ops_bench.graph_us(lambda: tiny.add_(1))
    print(f"graph timer, one 1-element kernel: {fixed:.2f} us")
    result = dict(meta=dict(command=sys.argv, device=torch.cuda.get_device_name(), torch=torch.__version__,
                            one_kernel_graph_us=fixed, flush=args.flush), rows=[])
    for spec in args.shapes.split(","):
        model, B, n, T = spec.split(":")
        B, n, T = int(B), int(n), int(T)
        q, k, v, mask, scale = ops_bench.attention_inputs(model, B, n, T)
        for pdl in ("1", "0"):
            os.environ["DLLM_CORE_ATTN_PDL"] = pdl
            for probs in (False, True):
                fn = lambda: ops.partial_attention(q, k, v, mask, scale, probs)  # noqa: E731
                row = dict(model=model, B=B, q=n, T=T, pdl=int(pdl), probs=probs,
                           plan=ops_bench.attention_plan(q, k, v, mask, scale, probs),
                           graph_us=ops_bench.graph_us(fn), **summarise(kernel_trace(fn, args.calls)))
                result["rows"].append(row)
                parts = "  ".join(f"{r['kernel']}@{r['start_us']:.1f}+{r['dur_us']:.1f}" for r in row["kernels"])
                print(f"{model} B{B} q{n} T{T} pdl={pdl} probs={int(probs)} [{ops_bench.plan_str(row['plan'])}] "
                      f"graph {row['graph_us']:.1f} us, span {row['span_us']:.1f} us: {parts}", flush=True)
        os.environ.pop("DLLM_CORE_ATTN_PDL", None)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
