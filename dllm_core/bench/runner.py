"""Run one decoding configuration and time it step by step.

A :class:`Case` is a strategy at a shape; :func:`run_case` builds an :class:`~dllm_core.Engine` on a
given model, runs warm-up generations (which capture the CUDA graphs), then timed ones, and reports
per-step forward times (CUDA events around every model call, refresh and cached steps apart, calls
that captured a graph left out), NFE, tokens/s over the whole generation, and peak GPU memory.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ..cuda_graphs import GraphedForward
from ..engine import Engine
from ..models.base import DiffusionLM, KVCache
from ..state import ForwardOutput, ForwardPlan
from .hardware import ModelCost, gib, memory_budget_bytes


@dataclass
class Case:
    """One benchmark configuration."""

    name: str
    cache: str = "none"
    scheduler: str = "low_confidence"
    cache_options: dict[str, Any] = field(default_factory=dict)
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 1
    prompt_length: int = 700
    gen_length: int = 256
    block_length: int = 32
    fixed_per_step: float | None = 1.0   #: commits per step (low_confidence with steps = gen / n)
    steps: int | None = None             #: explicit step budget (when fixed_per_step is None)
    eager: bool = False
    warmup_runs: int = 1
    timed_runs: int = 1
    profile: bool = False                #: kernel breakdown of a cached step (torch.profiler)

    def total_steps(self) -> int:
        if self.fixed_per_step is not None:
            return max(1, round(self.gen_length / self.fixed_per_step))
        return self.steps or self.gen_length


class TimedForward:
    """Wraps ``engine.forward``; records CUDA events (or host times on CPU) around every call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.cuda = torch.cuda.is_available() and next(_model_of(inner).parameters()).is_cuda
        self.records: list[tuple[bool, int, bool, Any, Any]] = []
        #: the arguments of the last cached (non-refresh) call, for :func:`profile_forward`
        self.sample: tuple[Any, ...] | None = None

    def new_kv_cache(self, batch: int, length: int) -> KVCache:
        return self.inner.new_kv_cache(batch, length)

    def __call__(self, input_ids: Tensor, positions: Tensor, valid: Tensor, cache: KVCache, plan: ForwardPlan,
                 logit_positions: Tensor) -> ForwardOutput:
        start: Any
        end: Any
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            start = time.perf_counter()
        out = self.inner(input_ids, positions, valid, cache, plan, logit_positions)
        if plan.rows is not None:
            self.sample = (input_ids, positions, valid, cache, plan, logit_positions)
        if self.cuda:
            end.record()
        else:
            end = time.perf_counter()
        rows = input_ids.shape[1] if plan.rows is None else plan.rows.shape[1]
        self.records.append((plan.rows is None, rows, bool(getattr(self.inner, "last_call_captured", False)),
                             start, end))
        return out

    def step_times(self) -> list[tuple[bool, int, bool, float]]:
        """(refresh, rows, captured, milliseconds) of every call so far."""
        if self.cuda:
            torch.cuda.synchronize()
            return [(r, q, c, s.elapsed_time(e)) for r, q, c, s, e in self.records]
        return [(r, q, c, (e - s) * 1e3) for r, q, c, s, e in self.records]


def _model_of(forward: Any) -> DiffusionLM:
    return forward.model if isinstance(forward, GraphedForward) else forward


# -- attention path -------------------------------------------------------------------------------

def sdpa_partial_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, key_mask: Tensor, scale: float,
                           return_probs: bool = False) -> tuple[Tensor, Tensor]:
    """``ops.partial_attention`` through ``F.scaled_dot_product_attention`` (no probabilities).

    GQA without copying the cache: the ``g`` query heads sharing a K/V head attend to the same keys
    under the same (non-causal) mask, so they are folded into the query rows of that K/V head.
    """
    if return_probs:
        return _ORIGINAL_ATTENTION(q, k_cache, v_cache, key_mask, scale, True)
    B, n, H, D = q.shape
    hkv = k_cache.shape[2]
    g = H // hkv
    qh = q.reshape(B, n, hkv, g, D).permute(0, 2, 3, 1, 4).reshape(B, hkv, g * n, D)
    out = F.scaled_dot_product_attention(qh, k_cache.transpose(1, 2), v_cache.transpose(1, 2),
                                         attn_mask=key_mask[:, None, None, :], scale=scale)
    out = out.reshape(B, hkv, g, n, D).permute(0, 3, 1, 2, 4).reshape(B, n, H, D)
    return out, q.new_empty(0, dtype=torch.float32)


_ORIGINAL_ATTENTION = ops.partial_attention


def extension_attention_on(device_type: str = "cuda") -> bool:
    """True when the compiled extension implements partial attention on ``device_type``."""
    try:
        from ..ops.extension import extension_status  # type: ignore[import-not-found]

        status = extension_status()
        impl = status.get("ops", {}).get("partial_attention", {})
        return bool(status.get("loaded")) and impl.get(device_type) == "compiled"
    except Exception:  # noqa: BLE001 - no extension module or an unexpected status layout
        return False


@contextlib.contextmanager
def attention_path(kind: str, device_type: str = "cuda") -> Iterator[str]:
    """``ops``: the library's dispatch; ``sdpa``: :func:`sdpa_partial_attention` patched into
    ``dllm_core.ops`` for the duration (a benchmark-only override); ``auto``: ``ops`` when the
    extension has a kernel for the device, else ``sdpa``.  Yields the path used."""
    compiled = extension_attention_on(device_type)
    if kind == "auto":
        kind = "ops" if compiled else "sdpa"
    if kind == "ops":
        yield "ops (extension)" if compiled else "ops (reference)"
        return
    if kind != "sdpa":
        raise ValueError(f"unknown attention path {kind!r} (ops, sdpa, auto)")
    ops.partial_attention = sdpa_partial_attention
    try:
        yield "sdpa (benchmark override)"
    finally:
        ops.partial_attention = _ORIGINAL_ATTENTION


# -- where the time of a step goes -----------------------------------------------------------------

def _category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("fmha", "flash", "attention", "attn", "sdpa", "efficient")):
        return "attention"
    if any(k in n for k in ("gemm", "cutlass", "xmma", "nvjet", "cublas", "splitk")) or n.endswith("mm"):
        return "gemm"
    if "memcpy" in n or "memset" in n:
        return "copy"
    return "other"


def profile_forward(forward: Any, args: tuple[Any, ...], reps: int = 5) -> dict[str, Any]:
    """Kernel count and device time by category (gemm, attention, copy, other) per call of
    ``forward(*args)`` (a graph replay is profiled kernel by kernel too), next to its event time.
    On a CPU the same is done with operator self-times (a smoke test of this code)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = bool(args[0].is_cuda)
    with torch.inference_mode():
        forward(*args)
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            if cuda:
                start.record()
            for _ in range(reps):
                forward(*args)
            if cuda:
                end.record()
                torch.cuda.synchronize()
            wall = start.elapsed_time(end) / reps if cuda else (time.perf_counter() - t0) * 1e3 / reps
    by: dict[str, list[float]] = {}
    named: list[tuple[float, float, str]] = []
    for ev in prof.key_averages():
        us = (getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0.0)) if cuda \
            else ev.self_cpu_time_total
        if not us or ev.count == 0:
            continue
        named.append((us / 1e3 / reps, ev.count / reps, ev.key[:80]))
        cat = by.setdefault(_category(ev.key), [0.0, 0.0])
        cat[0] += ev.count / reps
        cat[1] += us / 1e3 / reps
    busy = sum(v[1] for v in by.values())
    return {"kernels": int(sum(v[0] for v in by.values())), "kernel_ms": round(busy, 3), "event_ms": round(wall, 3),
            "idle_ms": round(wall - busy, 3),
            **{f"{k}_ms": round(v[1], 3) for k, v in by.items()}, **{f"{k}_kernels": int(v[0]) for k, v in by.items()},
            "top": [[name, round(n, 1), round(ms, 4)] for ms, n, name in sorted(named, reverse=True)[:15]]}


# -- one case -------------------------------------------------------------------------------------

def random_prompts(spec: Any, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    """Random token ids that are neither mask nor EOS/pad."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, spec.vocab_size, (batch, length), generator=g)
    for special in {spec.mask_id, spec.eos_id, spec.pad_id}:
        ids[ids == special] = (special + 1) % spec.vocab_size
    return ids.tolist()


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 4) if xs else None


def run_case(model: DiffusionLM, case: Case, cost: ModelCost, ceilings: dict[str, float],
             device: torch.device) -> dict[str, Any]:
    """Warm up, time, and summarise one case (see the module docstring)."""
    cuda = device.type == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    eng = Engine(model=model, cache=case.cache, scheduler=case.scheduler, cache_options=case.cache_options,
                 scheduler_options=case.scheduler_options, device=device, cuda_graphs=cuda and not case.eager)
    graphed = eng.forward
    timed = TimedForward(graphed)
    eng.forward = timed  # type: ignore[assignment]  # same call signature as the model
    prompts = random_prompts(model.spec, case.batch_size, case.prompt_length)
    settings: dict[str, Any] = {"gen_length": case.gen_length, "block_length": case.block_length, "steps": case.total_steps()}
    try:
        for _ in range(case.warmup_runs):
            eng.generate_ids(prompts, **settings)
        timed.records.clear()
        walls, nfes, steps = [], [], []
        for _ in range(case.timed_runs):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = eng.generate_ids(prompts, **settings)
            if cuda:
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - t0)
            nfes.append(res.nfe)
            steps.append(res.steps)
        times = timed.step_times()
        peak = torch.cuda.max_memory_allocated(device) if cuda else float("nan")
        profiles: dict[str, Any] = {}
        if case.profile and timed.sample is not None:
            try:
                if isinstance(graphed, GraphedForward):
                    profiles["graphed"] = profile_forward(graphed, timed.sample)
                x, pos, valid, _, plan, lp = timed.sample  # eager: a cache of the exact length
                profiles["eager"] = profile_forward(model, (x, pos, valid, model.new_kv_cache(*x.shape), plan, lp))
            except Exception as exc:  # noqa: BLE001 - the profiler is a diagnostic only
                profiles["error"] = f"{type(exc).__name__}: {exc}"
        stats = dict(getattr(graphed, "stats", {}))
        graphs = getattr(graphed, "num_graphs", 0)
    finally:
        if isinstance(graphed, GraphedForward):
            graphed.clear()
        del eng, graphed, timed
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()

    T = case.prompt_length + case.gen_length
    B = case.batch_size
    kept = [(r, q, ms) for r, q, captured, ms in times if not captured]
    refresh = [ms for r, _, ms in kept if r]
    cached = [ms for r, _, ms in kept if not r]
    cached_rows = [q for r, q, _ in kept if not r]
    rows_med = int(statistics.median(cached_rows)) if cached_rows else None
    r = min(case.block_length, case.gen_length)
    refresh_floor = cost.floor_ms(ceilings, B, T, r, T)
    cached_floor = cost.floor_ms(ceilings, B, rows_med, r, T) if rows_med else None
    wall = statistics.median(walls)
    out: dict[str, Any] = {
        **asdict(case), "length": T, "steps_total": case.total_steps(), "nfe": nfes[0], "steps_taken": steps[0],
        "wall_s": round(wall, 4), "tok_s": round(B * case.gen_length / wall, 2),
        "refresh_ms": _median(refresh), "refresh_calls": len(refresh), "cached_ms": _median(cached),
        "cached_calls": len(cached), "cached_rows_median": rows_med,
        "cached_rows_range": [min(cached_rows), max(cached_rows)] if cached_rows else None,
        "forward_ms_total": round(sum(ms for _, _, ms in kept), 3) / max(1, case.timed_runs),
        "refresh_floor": refresh_floor, "cached_floor": cached_floor,
        "refresh_ratio": round(statistics.median(refresh) / refresh_floor["floor_ms"], 3) if refresh else None,
        "cached_ratio": (round(statistics.median(cached) / cached_floor["floor_ms"], 3)
                         if cached and cached_floor else None),
        "peak_gib": gib(peak), "budget_gib": gib(memory_budget_bytes(cost, B, T)),
        "weights_gib": gib(cost.weight_bytes), "kv_gib": gib(cost.kv_bytes(B, T)),
        "graph_stats": stats, "graphs": graphs, "profile": profiles,
    }
    out["host_ms_per_step"] = round((wall * 1e3 - out["forward_ms_total"]) / max(1, steps[0]), 3)
    return out
