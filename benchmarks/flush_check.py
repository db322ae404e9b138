"""What the graph timer's L2 flush charges to the timed call (GPU only; not collected by pytest).

    PYTHONPATH=.:plugins python3 benchmarks/flush_check.py [--out flush_check.json]

ops_bench's graph timer evicts the L2 before every call, either by zeroing a 256 MB buffer ("write", the
default) or by summing one of two 256 MB buffers in turn ("read").  After
the write flush about an L2's worth of dirty lines (50 MB on the H100) wait in the cache, and the timed
call's reads write them back.  This times one read-only kernel (a float32 sum) over buffers of 1-512 MB
under both flushes: the difference is what the write flush charges each call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ops_bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("flush_check.py needs a CUDA device")
    copy_bw = ops_bench.copy_bandwidth()
    print(f"command: {' '.join(sys.argv)}\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"copy {copy_bw:.0f} GB/s (read + write)")
    rows = []
    for mb in (1, 8, 32, 64, 134, 512):
        x = torch.ones(mb * 2**18, device="cuda")  # mb MB of float32
        row = dict(MB=mb)
        for flush in ("read", "write"):
            ops_bench.FLUSH = flush
            row[f"{flush}_us"] = ops_bench.graph_us(lambda: torch.sum(x))
        row["extra_MB"] = (row["write_us"] - row["read_us"]) * 1e-6 * copy_bw * 1e3  # DRAM traffic at the copy rate
        rows.append(row)
        print(f"sum over {mb:4d} MB: read flush {row['read_us']:7.1f} us, write flush {row['write_us']:7.1f} us "
              f"(+{row['write_us'] - row['read_us']:.1f} us: ~{row['extra_MB']:.0f} MB more at the copy rate)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(command=" ".join(sys.argv), gpu=torch.cuda.get_device_name(), copy_GBps=copy_bw,
                           rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
