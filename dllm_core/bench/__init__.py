"""End-to-end decoding benchmark: random weights at the real LLaDA-8B / Dream-7B shapes, per-step
times against the memory-bandwidth / matmul floor measured on the same device.

Entry points: ``python benchmarks/e2e_bench.py`` and ``dllm-run bench`` (both :func:`cli.main`).
"""

from __future__ import annotations

from .hardware import ModelCost, build_random_model, measure_ceilings
from .runner import Case, TimedForward, run_case

__all__ = ["Case", "ModelCost", "TimedForward", "build_random_model", "measure_ceilings", "run_case"]
