"""GPU benchmark of the fused greedy confidence (ops.argmax_confidence) against the float32 path.

    PYTHONPATH=.:plugins python3 benchmarks/argmax_bench.py --out argmax_bench.json

bf16 logits of LLaDA-8B (V = 126464) and Dream-7B (V = 152064) for 32 rows (batch 1 x one
32-column block), 512 rows (batch 16) and 4096 rows (batch 16 x 256 columns: d2cache's first step).
"float32 path" = what the greedy schedulers ran before: ``logits.float()``, argmax, gather and
logsumexp.  Times: median of triton.testing.do_bench (L2 flushed) in microseconds; bandwidth counts
one read of the bf16 logits against a device-to-device copy measured in the same run; peak =
extra CUDA memory allocated by one call beyond its input.  Each row records the max confidence
deviation and whether the tokens agree.  Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import dllm_core.ops as ops  # noqa: E402
from benchmarks.ops_bench import bench_us, copy_bandwidth  # noqa: E402

VOCABS = {"LLaDA-8B": (126464, 126336), "Dream-7B": (152064, 151666)}  # (V, mask id)


def float32_path(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lf = logits.float()
    tok = lf.argmax(-1)
    return tok, (lf.gather(-1, tok.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lf, -1)).exp()


def peak_extra_mb(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def row(model: str, rows: int, copy_bw: float) -> dict:
    V, mask_id = VOCABS[model]
    logits = (torch.randn(rows, V, device="cuda") * 4).to(torch.bfloat16)
    logits[:, mask_id] = float("-inf")
    r = dict(model=model, rows=rows, V=V)
    r["ours_us"] = bench_us(lambda: ops.argmax_confidence(logits))
    r["float32_path_us"] = bench_us(lambda: float32_path(logits))
    r["speedup"] = r["float32_path_us"] / r["ours_us"]
    r["ours_GBps"] = logits.numel() * 2 / (r["ours_us"] * 1e-6) / 1e9
    r["ours_pct_copy"] = 100 * r["ours_GBps"] / (copy_bw / 2)  # a copy reads and writes; we only read
    r["ours_peak_MB"] = peak_extra_mb(lambda: ops.argmax_confidence(logits))
    r["float32_path_peak_MB"] = peak_extra_mb(lambda: float32_path(logits))
    t1, p1 = ops.argmax_confidence(logits)
    t2, p2 = float32_path(logits)
    r["tokens_equal"] = bool(torch.equal(t1, t2))
    r["max_rel_err"] = ((p1 - p2).abs() / p2).max().item()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="where to write the JSON results")
    args = ap.parse_args()
    torch.manual_seed(0)
    copy_bw = copy_bandwidth()
    meta = dict(gpu=torch.cuda.get_device_properties(0).name, torch=torch.__version__, cuda=torch.version.cuda,
                copy_GBps=copy_bw, extension=ops.extension_status()["ops"].get("argmax_confidence"))
    print(json.dumps(meta))
    rows = [row(m, n, copy_bw) for m in VOCABS for n in (32, 512, 4096)]
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print("| model | rows | ours us | float32 path us | x | ours GB/s (% of copy read rate) | peak MB ours / f32 "
          "| tokens equal | max rel err |")
    print("|" + "---|" * 9)
    for r in rows:
        print(f"| {r['model']} | {r['rows']} | {r['ours_us']:.1f} | {r['float32_path_us']:.1f} | {r['speedup']:.2f} | "
              f"{r['ours_GBps']:.0f} ({r['ours_pct_copy']:.0f}%) | {r['ours_peak_MB']:.2f} / {r['float32_path_peak_MB']:.0f} "
              f"| {r['tokens_equal']} | {r['max_rel_err']:.2g} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
