"""The compulsory-traffic floor of partial attention at ops_bench's shapes (GPU only; not collected by pytest).

    PYTHONPATH=.:plugins python3 benchmarks/io_floor.py --ops ops.json [--out floor.json]

Every partial_attention call must read Q, K, V and the key mask once and write its output; with
probabilities it also writes the (B, q, T) float32 head mean.  This times one Triton kernel that moves
exactly that traffic and nothing else (reads a buffer of the inputs' size, writes one of the outputs'
size, no attention) under ops_bench's graph timer (same L2 flush, same subtraction), best of a few
tile shapes.  An attention kernel does that traffic and more, so under this timer on this GPU it cannot
be faster than the floor, to the extent that the floor kernel moves bytes as fast as any kernel can (its
rate on a 1 GiB move is printed against the copy bandwidth).  A target time below the floor therefore
cannot be met by any implementation.

With --ops (an ops_bench.py JSON, ideally from the same call), each shape is set beside that run's
figures: ours and SDPA flash against the output-only floor, ours with probabilities and a third of the
best probability baseline (the 3x target) against the floor with probabilities.  Without it the
floors of ops_bench's 48 shapes are printed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ops_bench  # noqa: E402
from ops_bench import MODELS  # noqa: E402

# (elements per load, unrolled loads per program, warps): short programs for the small calls, long
# ones for the large; the floor is the fastest.
CONFIGS = [(1024, 1, 4), (2048, 1, 4), (1024, 4, 4), (2048, 4, 8), (4096, 2, 8), (4096, 4, 8)]


@functools.cache  # one JIT function for every floor_us call: its compiled variants are cached on it
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def move(src, n_src, dst, n_dst, part, BLOCK: tl.constexpr, ITERS: tl.constexpr):
        """Reads src[:n_src] and writes dst[:n_dst] (int32 words), each program a contiguous range of both;
        one checksum word per program keeps the reads beyond n_dst alive."""
        base = tl.program_id(0) * BLOCK * ITERS
        acc = tl.zeros([BLOCK], dtype=tl.int32)
        for i in tl.static_range(ITERS):
            offs = base + i * BLOCK + tl.arange(0, BLOCK)
            x = tl.load(src + offs, mask=offs < n_src, other=0)
            tl.store(dst + offs, x, mask=offs < n_dst)
            acc += x
        tl.store(part + tl.program_id(0), tl.sum(acc, axis=0))

    return triton, move


def floor_us(read_bytes: int, write_bytes: int) -> tuple[float, list[int]]:
    """Graph-timer microseconds of the fastest CONFIGS move of read_bytes in and write_bytes out, and its config."""
    triton, move = _kernel()
    n_src, n_dst = -(-read_bytes // 4), -(-write_bytes // 4)
    src = torch.ones(n_src, dtype=torch.int32, device="cuda")
    dst = torch.empty(max(n_dst, 1), dtype=torch.int32, device="cuda")
    best = (float("inf"), [])
    for block, iters, warps in CONFIGS:
        grid = (triton.cdiv(max(n_src, n_dst), block * iters),)
        part = torch.empty(grid[0], dtype=torch.int32, device="cuda")

        def call(grid=grid, part=part, block=block, iters=iters, warps=warps):
            move[grid](src, n_src, dst, n_dst, part, BLOCK=block, ITERS=iters, num_warps=warps)

        call()  # compile outside the graph capture
        torch.cuda.synchronize()
        us = ops_bench.graph_us(call)
        if us < best[0]:
            best = (us, [block, iters, warps])
    return best


def call_bytes(model: str, B: int, n: int, T: int) -> tuple[int, int, int]:
    """(bytes read, bytes written without probabilities, bytes of the probabilities) of one bf16 call."""
    H, Hkv, D = MODELS[model]
    read = 2 * B * n * H * D + 2 * 2 * B * T * Hkv * D + B * T  # Q, K, V (bf16), mask (bool)
    return read, 2 * B * n * H * D, 4 * B * n * T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", help="an ops_bench.py JSON whose attention rows to set beside their floors")
    ap.add_argument("--out", help="write the rows as JSON here")
    ops_bench.add_flush_arg(ap)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("io_floor.py needs a CUDA device (and Triton)")
    ops_bench.FLUSH = args.flush
    copy_bw = ops_bench.copy_bandwidth()
    big, _ = floor_us(2**30, 2**30)
    print(f"command: {' '.join(sys.argv)}\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"timer: graph ({args.flush} flush)\ncopy {copy_bw:.0f} GB/s (read + write); floor kernel moving 1 GiB in "
          f"+ 1 GiB out: {big:.0f} us = {2 * 2**30 / big / 1e3:.0f} GB/s", flush=True)
    if args.ops:
        with open(args.ops) as f:
            measured = json.load(f)["attention"]
    else:
        measured = [{"model": m, "B": B, "q": n, "T": T} for m in MODELS for B in (1, 16) for T in (512, 1024, 2048, 4096)
                    for n in (32, 64, 128)]
    rows = []
    print("| model | B | q | T | floor | ours | flash | floor+probs | ours+probs | best/3 (target) | target >= floor |")
    print("|" + "---|" * 11)
    for m in measured:
        read, write, probs = call_bytes(m["model"], m["B"], m["q"], m["T"])
        row = {"model": m["model"], "B": m["B"], "q": m["q"], "T": m["T"], "read_bytes": read,
               "write_bytes": write, "probs_bytes": probs}
        row["floor_us"], row["floor_config"] = floor_us(read, write)
        row["floor_probs_us"], row["floor_probs_config"] = floor_us(read, write + probs)
        cols = ["-"] * 4
        if "ours_probs_us" in m:
            target = min(m["eager_probs_us"], m["flash_plus_probs_us"]) / 3
            row.update(ours_us=m["ours_us"], flash_us=m["flash_us"], ours_probs_us=m["ours_probs_us"],
                       target_probs_us=target, target_reachable=target >= row["floor_probs_us"])
            cols = [f"{m['ours_us']:.1f}", f"{m['flash_us']:.1f}", f"{m['ours_probs_us']:.1f}", f"{target:.1f}"]
        rows.append(row)
        verdict = "-" if "target_reachable" not in row else "yes" if row["target_reachable"] else "**no**"
        print(f"| {row['model']} | {row['B']} | {row['q']} | {row['T']} | {row['floor_us']:.1f} | {cols[0]} | {cols[1]} | "
              f"{row['floor_probs_us']:.1f} | {cols[2]} | {cols[3]} | {verdict} |", flush=True)
    if args.ops:
        below = [r for r in rows if not r["target_reachable"]]
        print(f"\nthe 3x probability target lies below the floor with probabilities at {len(below)}/{len(rows)} shapes")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "flush": args.flush,
                       "copy_GBps": copy_bw, "move_1GiB_us": big, "ops": args.ops, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
