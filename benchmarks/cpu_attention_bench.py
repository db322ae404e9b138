"""CPU partial attention: the compiled kernel against the plain-PyTorch reference (one thread).

Usage: ``PYTHONPATH=.:plugins python benchmarks/cpu_attention_bench.py``.  Prints the machine,
the command and, per shape, the mean milliseconds of both paths over 5 calls after one warm-up.
The shapes are the shipped testbed model's (D=32, T=126; batch 100 is the eval harness's batch)
and two LLaDA-8B-like ones.  Timings on a shared machine are noisy: compare ratios, not absolutes.
"""

from __future__ import annotations

import platform
import sys
import time

import torch

from dllm_core.ops import extension_status
from dllm_core.ops.partial_attention import partial_attention_reference

SHAPES = [(100, 126, 8, 32, 126), (100, 32, 8, 32, 126), (1, 32, 8, 32, 126), (1, 256, 32, 128, 1024),
          (1, 32, 32, 128, 1024)]


def mean_ms(fn, reps: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def main() -> int:
    torch.set_num_threads(1)
    print(f"# command: {' '.join([sys.executable, *sys.argv])}")
    print(f"# machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    if extension_status()["ops"]["partial_attention"]["cpu"] != "compiled":
        print("the compiled CPU kernel is not built (python setup.py build_ext --inplace)")
        return 1
    for B, n, H, D, T in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            q = torch.randn(B, n, H, D).to(dtype)
            k, v = (torch.randn(B, T, H, D).to(dtype) for _ in range(2))
            mask = torch.ones(B, T, dtype=torch.bool)
            for probs in (False, True):
                ours = mean_ms(lambda: torch.ops.dllm_core.partial_attention(q, k, v, mask, 0.1, probs))
                ref = mean_ms(lambda: partial_attention_reference(q, k, v, mask, 0.1, probs))
                print(f"B={B} q={n} H={H} D={D} T={T} {str(dtype)[6:]} probs={probs}: compiled {ours:.2f} ms, "
                      f"reference {ref:.2f} ms, reference/compiled {ref / ours:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
