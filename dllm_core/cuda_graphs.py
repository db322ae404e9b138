"""Replay the model's partial forward from captured CUDA graphs (nano-vllm style).

:class:`GraphedForward` wraps a :class:`~dllm_core.models.base.DiffusionLM` and is called exactly
like it (``forward(input_ids, positions, valid, cache, plan, logit_positions)``).  It keeps

* one persistent K/V cache per (batch, padded length): :meth:`GraphedForward.new_kv_cache`
  returns the same buffers for the same shape, so graphs captured against them stay valid across
  generations (lengths are padded to a multiple of 64 with invalid columns, so prompts of nearby
  lengths share them; the least recently used shapes beyond ``max_slots`` are dropped);
* static input buffers per such shape (token ids, positions, validity, the plan's rows and the
  logit positions), into which each call copies its inputs (device-to-device, no host sync);
* one captured graph per *plan shape*: refresh or rows, the bucketed row count, the bucketed
  logit-position count, ``kv_limit`` and ``need_attention``; all graphs share one memory pool.

Bucketing.  Cache policies such as d2Cache or FreeCache recompute a different number of rows each
step; capturing a graph per count would capture on almost every step.  The row count q is rounded
up to a bucket (:func:`bucket_size`) and the extra rows are duplicates of the last row.  That is
exact: a duplicated row has the same token, position and attention inputs as its original, so it
computes the same hidden states and writes the same K/V to the same cache column in every layer
(two identical writes), and attention is over cache columns, so duplicates add no keys.  Logit
positions are padded the same way; the padded outputs are sliced off.

Outputs.  The returned :class:`~dllm_core.state.ForwardOutput` holds views of the graph's static
output buffers: they are valid until the next call of this object (clone them to keep them).

Constraints on the wrapped forward: no host synchronisation and no data-dependent shapes on the
CUDA path (the built-in :class:`~dllm_core.models.transformer.TransformerLM` qualifies: its only
check that reads values back runs on CPU tensors).  A shape whose capture fails, or that comes
after ``max_graphs`` captures, runs eagerly with a warning, so a forward that cannot be captured
still gives correct results.  With ``capture=False`` the wrapper runs the model eagerly on the
padded static buffers, which exercises the bucketing logic on any device (used by the CPU tests).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .graphed_function import capture_graph
from .models.base import DiffusionLM, KVCache
from .state import ForwardOutput, ForwardPlan

#: (upper bound, granularity) pairs: counts up to 64 round to a multiple of 16, up to 256 to a
#: multiple of 32, up to 1024 to a multiple of 128, beyond to a multiple of 256.  Padding costs
#: little: at batch 1 a partial forward reads every weight whatever q is, until q is a few hundred.
DEFAULT_BUCKETS: tuple[tuple[int, int], ...] = ((64, 16), (256, 32), (1024, 128))
_LAST_GRANULARITY = 256


def bucket_size(n: int, limit: int | None = None,
                buckets: tuple[tuple[int, int], ...] = DEFAULT_BUCKETS) -> int:
    """The padded size for ``n`` rows: ``n`` rounded up to its bucket's granularity, at most
    ``max(n, limit)`` (a bucket never exceeds the sequence length unless ``n`` itself does)."""
    if n < 1:
        raise ValueError(f"bucket_size needs n >= 1, got {n}")
    step = next((g for bound, g in buckets if n <= bound), _LAST_GRANULARITY)
    size = -(-n // step) * step
    return size if limit is None else max(n, min(size, limit))


def write_padded(dst: Tensor, src: Tensor) -> None:
    """Copy ``src`` (B, n) into ``dst`` (B, m >= n) and fill the remaining columns with copies of
    ``src``'s last column (the duplicate-row padding described in the module docstring)."""
    n, m = src.shape[1], dst.shape[1]
    if n > m:
        raise ValueError(f"cannot pad {n} columns into {m}")
    dst[:, :n].copy_(src)
    if m > n:
        dst[:, n:].copy_(src[:, n - 1:n].expand(-1, m - n))


def pad_columns(idx: Tensor, width: int) -> Tensor:
    """A new (B, width) tensor: ``idx`` followed by copies of its last column."""
    out = idx.new_empty(idx.shape[0], width)
    write_padded(out, idx)
    return out


GraphKey = tuple[Any, ...]


@dataclass
class _Graph:
    """A captured (or, with ``capture=False``, merely planned) forward of one plan shape."""

    plan: ForwardPlan                 #: the plan the static forward runs (rows: a static view)
    logit_positions: Tensor           #: static (B, rb) view
    graph: Any = None                 #: torch.cuda.CUDAGraph, None when run eagerly
    out: ForwardOutput | None = None  #: static outputs of the captured forward


@dataclass
class _Slot:
    """Everything kept per (batch, padded length): the persistent cache, static inputs, the graphs."""

    cache: KVCache
    input_ids: Tensor
    positions: Tensor
    valid: Tensor                     #: False on the columns past the caller's length
    rows: Tensor                      #: (B, Tp) long; a graph with q rows uses [:, :q]
    logit_positions: Tensor           #: (B, Tp) long; a graph with r logits uses [:, :r]
    length: int = 0                   #: the caller's length at the last call
    graphs: dict[GraphKey, _Graph] = field(default_factory=dict)


class GraphedForward:
    """A drop-in replacement of ``model`` (its partial forward) that replays CUDA graphs.

    Sequence lengths are padded up to a multiple of ``length_multiple`` with invalid columns
    (``valid`` False: no row attends to them and no plan recomputes them, except a refresh, whose
    extra rows are discarded), so generations whose prompts differ by a few tokens share the cache
    and the graphs.  Returned refresh rows and attention probabilities are cut back to the
    caller's length.

    :param model: the wrapped model (its parameters must not be replaced after capture).
    :param capture: capture CUDA graphs (needs a CUDA model); False runs the padded static
        forward eagerly, for tests and for debugging.
    :param buckets: (upper bound, granularity) pairs for padding row and logit counts.
    :param length_multiple: sequence lengths are padded to a multiple of this (1: never).
    :param max_slots: (batch, padded length) shapes kept at once (least recently used dropped).
    :param max_graphs: captures allowed over the object's life; later new shapes run eagerly.
    :param warmup: eager runs on a side stream before each capture (cuBLAS/kernel selection).
    """

    def __init__(self, model: DiffusionLM, *, capture: bool = True,
                 buckets: tuple[tuple[int, int], ...] = DEFAULT_BUCKETS, length_multiple: int = 64,
                 max_slots: int = 2, max_graphs: int = 64, warmup: int = 1) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        if capture and self.device.type != "cuda":
            raise ValueError(f"CUDA graph capture needs a CUDA model, this one is on {self.device}")
        if length_multiple < 1 or max_slots < 1:
            raise ValueError("length_multiple and max_slots must be >= 1")
        self.capture = capture
        self.buckets = buckets
        self.length_multiple = length_multiple
        self.max_slots = max_slots
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._slots: dict[tuple[int, int], _Slot] = {}
        self._pool: Any = torch.cuda.graph_pool_handle() if capture else None
        self._stream: Any = torch.cuda.Stream(self.device) if capture else None
        self._warned: set[str] = set()
        self.stats: dict[str, int] = {"captures": 0, "replays": 0, "eager_calls": 0}
        #: True when the last call captured a new graph (benchmarks leave such calls out of timings).
        self.last_call_captured = False

    # -- what the engine calls ------------------------------------------------------------------

    @property
    def spec(self) -> Any:
        """The wrapped model's :class:`~dllm_core.models.base.ModelSpec`."""
        return self.model.spec

    def padded_length(self, length: int) -> int:
        """The cache length used for sequences of ``length`` columns."""
        return -(-length // self.length_multiple) * self.length_multiple

    @torch.inference_mode()
    def new_kv_cache(self, batch: int, length: int) -> KVCache:
        """The persistent K/V cache for this shape (allocated on first use, then the same object).
        It may be longer than ``length`` (see ``length_multiple``); pass it back unchanged."""
        return self._slot(batch, self.padded_length(length)).cache

    @torch.inference_mode()
    def __call__(self, input_ids: Tensor, positions: Tensor, valid: Tensor, cache: KVCache, plan: ForwardPlan,
                 logit_positions: Tensor) -> ForwardOutput:
        self.last_call_captured = False
        B, T = input_ids.shape
        Tp = self.padded_length(T)
        slot = self._slots.get((B, Tp))
        if slot is None or cache is not slot.cache:
            self._warn("foreign", "GraphedForward: running eagerly because the K/V cache was not made by this "
                                  "object's new_kv_cache() for this shape")
            self.stats["eager_calls"] += 1
            return self.model(input_ids, positions, valid, cache, plan, logit_positions)
        self._slots[(B, Tp)] = self._slots.pop((B, Tp))  # most recently used last
        q = None if plan.rows is None else plan.rows.shape[1]
        r = logit_positions.shape[1]
        qb = None if q is None else bucket_size(q, Tp, self.buckets)
        rb = bucket_size(r, Tp, self.buckets)
        key: GraphKey = (qb, rb, plan.kv_limit, bool(plan.need_attention))

        if slot.length != T:  # columns past the caller's length: invalid, harmless token ids
            slot.valid[:, T:].fill_(False)
            slot.input_ids[:, T:].fill_(0)
            slot.positions[:, T:].fill_(0)
            slot.length = T
        slot.input_ids[:, :T].copy_(input_ids)
        slot.positions[:, :T].copy_(positions)
        slot.valid[:, :T].copy_(valid)
        if plan.rows is not None:
            write_padded(slot.rows[:, :qb], plan.rows)
        write_padded(slot.logit_positions[:, :rb], logit_positions)

        entry = slot.graphs.get(key)
        if entry is None:
            entry = self._new_entry(slot, key, qb, rb, plan)
        if entry.graph is not None:
            entry.graph.replay()
            self.stats["replays"] += 1
            out = entry.out
        else:
            out = self._static_forward(slot, entry)
            self.stats["eager_calls"] += 1
        assert out is not None
        attention = None
        if out.attention is not None:
            attention = [a[:, :T if q is None else q, :T] for a in out.attention]
        return ForwardOutput(logits=out.logits[:, :r], positions=logit_positions,
                             rows=out.rows[:, :T] if plan.rows is None else plan.rows, attention=attention)

    def clear(self) -> None:
        """Drop every cache, buffer and graph (frees their memory; the next call starts afresh)."""
        self._slots.clear()
        if self.capture:
            self._pool = torch.cuda.graph_pool_handle()
            torch.cuda.empty_cache()

    @property
    def num_graphs(self) -> int:
        """Graphs captured and alive."""
        return sum(1 for s in self._slots.values() for g in s.graphs.values() if g.graph is not None)

    # -- internals ------------------------------------------------------------------------------

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _slot(self, batch: int, length: int) -> _Slot:
        slot = self._slots.pop((batch, length), None)  # re-inserted last: most recently used
        if slot is None:
            while len(self._slots) >= self.max_slots:  # drop the least recently used shape
                self._slots.pop(next(iter(self._slots)))
            dev = self.device
            cols = torch.arange(length, device=dev).expand(batch, length).contiguous()
            slot = _Slot(cache=self.model.new_kv_cache(batch, length),
                         input_ids=torch.zeros(batch, length, dtype=torch.long, device=dev),
                         positions=cols.clone(), valid=torch.zeros(batch, length, dtype=torch.bool, device=dev),
                         rows=cols.clone(), logit_positions=cols.clone())
        self._slots[(batch, length)] = slot
        return slot

    def _static_forward(self, slot: _Slot, entry: _Graph) -> ForwardOutput:
        return self.model(slot.input_ids, slot.positions, slot.valid, slot.cache, entry.plan, entry.logit_positions)

    def _new_entry(self, slot: _Slot, key: GraphKey, qb: int | None, rb: int, plan: ForwardPlan) -> _Graph:
        """A graph for ``key`` (captured unless capture is off, over budget, or failing: then the
        entry runs the static forward eagerly)."""
        entry = _Graph(plan=ForwardPlan(rows=None if qb is None else slot.rows[:, :qb], logit_positions=None,
                                        kv_limit=plan.kv_limit, need_attention=plan.need_attention),
                       logit_positions=slot.logit_positions[:, :rb])
        slot.graphs[key] = entry
        if not self.capture:
            return entry
        if self.stats["captures"] >= self.max_graphs:
            self._warn("budget", f"GraphedForward: more than max_graphs={self.max_graphs} plan shapes; new shapes "
                                 "run eagerly")
            return entry
        try:
            entry.graph, entry.out = self._capture(slot, entry)
        except Exception as exc:  # noqa: BLE001 - a forward that syncs on the host cannot be captured
            warnings.warn(f"GraphedForward: capture of plan shape {key} failed ({type(exc).__name__}: {exc}); "
                          "that shape runs eagerly", RuntimeWarning, stacklevel=3)
            try:
                torch.cuda.synchronize(self.device)
            except RuntimeError:  # pragma: no cover - a broken context surfaces at the next call anyway
                pass
            return entry
        self.stats["captures"] += 1
        self.last_call_captured = True
        return entry

    def _capture(self, slot: _Slot, entry: _Graph) -> tuple[Any, ForwardOutput]:
        # Warm-up on a side stream (lazy initialisation, cuBLAS workspaces, autotuning).  Running
        # the forward on the current inputs is harmless: it is idempotent (it writes the rows' K/V
        # from the same inputs), and the caller's call replays the graph right after.
        # Host syncs raise during the warm-up, so an uncapturable forward never starts a capture.
        with torch.cuda.device(self.device):
            return capture_graph(lambda: self._static_forward(slot, entry), self._stream, self.warmup, self._pool)
