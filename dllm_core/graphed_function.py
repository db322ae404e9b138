"""Replay a pure tensor function from CUDA graphs, one graph per input signature.

Per-step bookkeeping of a cache policy (row selection, attention rollout, ...) is typically a
hundred small kernels whose cost is the Python and launch latency of each, not GPU work: the
GPU idles while the host enqueues them.  :class:`GraphedFunction` captures such a function once
per *signature* and afterwards replays it with one launch::

    def top_rows(scores: Tensor, valid: Tensor, k: int) -> Tensor:
        return torch.where(valid, scores, float("-inf")).topk(k, dim=-1).indices.sort(-1).values

    graphed = GraphedFunction(top_rows, enabled=state.cuda_graphs)
    rows = graphed(scores, valid, 8)   # tensors are inputs, 8 is static (part of the signature)

Signature.  Every positional argument is either a tensor, whose shape, dtype and device enter
the signature and whose *values* are copied (device to device, no host sync) into a static
input buffer before each replay, or a hashable Python value (int, float, bool, str, None,
tuples of them), which enters the signature as is and is baked into the graph.  A function
called with varying shapes therefore captures one graph per shape: pad inputs to a few
buckets (:func:`dllm_core.cuda_graphs.bucket_size`) and pass the true size as a tensor.

Outputs.  Whatever the function returns (a tensor, a tuple or a dataclass of tensors, ...).
After a replay they are the objects the capture returned, holding the graph's static output
tensors: valid until the next call *with the same signature*, which overwrites them (clone what
must outlive it).  Each graph has its own memory pool, so replaying one graph never overwrites
another graph's outputs.

Eager fallback.  The function runs eagerly, exactly as a plain call, when the facility is
disabled (``enabled=False``, e.g. ``Engine(cuda_graphs=False)``), when the tensor arguments are
not all on one CUDA device, when no argument is a tensor, for new signatures after
``max_captures`` captures (warned once), and for a signature whose capture failed (warned; e.g.
the function synchronises with the host).  At most ``max_graphs`` graphs are kept, least
recently used dropped first.

``simulate=True`` runs the static-buffer path on any device without CUDA graphs: inputs are
copied into static buffers and every call recomputes the outputs *into the same output tensors*,
which reproduces the aliasing of graph replays (for CPU tests of callers, and for debugging).

Requirements on the function: pure (reads its arguments, writes no argument and no outside
state), no host synchronisation (``.item()``, ``.tolist()``, ``bool(tensor)``, data-dependent
shapes such as ``nonzero`` or boolean indexing), every output computed from the arguments on
their CUDA device.  It runs in inference mode.  Warm-up runs before a capture execute it on the
current inputs, which a pure function allows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@contextlib.contextmanager
def host_syncs_raise() -> Iterator[None]:
    """Turn CUDA host synchronisations into errors for the duration (warm-ups before a capture).

    A function that syncs then fails in its warm-up, before any capture starts.  A capture that
    fails midway is worse than slow: it can leave the CUDA generator registered with the dead
    graph, after which every random op of the process raises ("Offset increment outside graph
    capture").  torch calls the mode a prototype and warns so; strict test runs turn that warning
    into an error, hence the filter.
    """
    previous = torch.cuda.get_sync_debug_mode()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.cuda.set_sync_debug_mode("error")
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.cuda.set_sync_debug_mode(previous)


def capture_graph(fn: Callable[[], Any], stream: Any, warmup: int, pool: Any = None) -> tuple[Any, Any]:
    """``(graph, outputs)``: ``fn()`` warmed up ``max(1, warmup)`` times on the side ``stream``
    (lazy initialisation, cuBLAS workspaces) with host syncs raising (:func:`host_syncs_raise`),
    then captured on it into a ``torch.cuda.CUDAGraph`` (memory ``pool``: None = a private one).
    The current device and stream are the caller's."""
    current = torch.cuda.current_stream()
    stream.wait_stream(current)
    with host_syncs_raise(), torch.cuda.stream(stream):
        for _ in range(max(1, warmup)):
            fn()
    current.wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = fn()
    return graph, outputs

Signature = tuple[Any, ...]


@dataclass
class _Entry:
    """One signature: its static inputs, the captured graph and its static outputs (graph None: eager)."""

    inputs: list[Tensor]
    graph: Any = None
    outputs: Any = None


def _copy_into(dst: Any, src: Any) -> None:
    """Copy the tensors of ``src`` into those of ``dst`` (the same structure: tensors, tuples,
    lists, dicts and dataclasses of them; other leaves are left alone)."""
    if isinstance(dst, Tensor):
        dst.copy_(src)
    elif isinstance(dst, (tuple, list)):
        for d, s in zip(dst, src):
            _copy_into(d, s)
    elif isinstance(dst, dict):
        for k in dst:
            _copy_into(dst[k], src[k])
    elif dataclasses.is_dataclass(dst) and not isinstance(dst, type):
        for f in dataclasses.fields(dst):
            _copy_into(getattr(dst, f.name), getattr(src, f.name))


class _SimulatedGraph:
    """What ``simulate=True`` stores instead of a CUDA graph: replay recomputes into the outputs."""

    def __init__(self, fn: Callable[..., Any], static_args: tuple[Any, ...], outputs: Any) -> None:
        self.fn, self.static_args, self.outputs = fn, static_args, outputs

    def replay(self) -> None:
        _copy_into(self.outputs, self.fn(*self.static_args))


def signature(args: tuple[Any, ...]) -> Signature:
    """The graph key of ``args``: (shape, dtype, device) for tensors, the value for the rest.

    Raises ``TypeError`` for an argument that is neither a tensor nor hashable."""
    key: list[Any] = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            key.append(("tensor", tuple(a.shape), a.dtype, a.device))
        else:
            try:
                hash(a)
            except TypeError:
                raise TypeError(f"GraphedFunction: argument {i} ({type(a).__name__}) is neither a tensor nor "
                                "hashable; pass tensors or static Python values") from None
            key.append(("value", type(a).__name__, a))
    return tuple(key)


class GraphedFunction:
    """``fn(*args)`` replayed from a CUDA graph per signature, with an eager fallback.

    :param fn: a pure tensor function (see the module docstring).
    :param enabled: capture graphs at all; False always runs ``fn`` eagerly.
    :param max_graphs: graphs kept alive; beyond, the least recently used one is dropped (a
        workload whose shapes change, e.g. with the prompt length, keeps capturing new ones).
    :param max_captures: captures allowed over the object's life (a guard against thrashing
        between more than ``max_graphs`` signatures); later new signatures run eagerly.
    :param warmup: eager runs on a side stream before each capture (lazy initialisation, cuBLAS
        workspaces).
    :param name: used in warnings (default: ``fn``'s name).
    :param simulate: no CUDA graphs; the static-buffer path on any device (module docstring).
    """

    def __init__(self, fn: Callable[..., Any], *, enabled: bool = True, max_graphs: int = 32,
                 max_captures: int = 1024, warmup: int = 2, name: str | None = None, simulate: bool = False) -> None:
        if max_graphs < 1 or max_captures < 0 or warmup < 0:
            raise ValueError("GraphedFunction needs max_graphs >= 1, max_captures >= 0 and warmup >= 0")
        self.fn = fn
        self.enabled = enabled
        self.max_graphs = max_graphs
        self.max_captures = max_captures
        self.warmup = warmup
        self.name = name or getattr(fn, "__name__", "function")
        self.simulate = simulate
        self._entries: dict[Signature, _Entry] = {}  # least recently used first
        self._streams: dict[torch.device, Any] = {}
        self._warned: set[str] = set()
        self.stats: dict[str, int] = {"captures": 0, "replays": 0, "eager_calls": 0, "evictions": 0}
        #: True when the last call captured a new graph (benchmarks leave such calls out of timings).
        self.last_call_captured = False

    @torch.inference_mode()
    def __call__(self, *args: Any) -> Any:
        self.last_call_captured = False
        device = self._graph_device(args)
        if device is None:
            self.stats["eager_calls"] += 1
            return self.fn(*args)
        key = signature(args)
        entry = self._entries.pop(key, None)
        if entry is None:
            entry = self._new_entry(key, args, device)  # its static inputs hold this call's values
        elif entry.graph is not None:
            for static, a in zip(entry.inputs, (a for a in args if isinstance(a, Tensor))):
                static.copy_(a)
        self._entries[key] = entry  # most recently used last
        if entry.graph is None:
            self.stats["eager_calls"] += 1
            return self.fn(*args)
        entry.graph.replay()
        self.stats["replays"] += 1
        return entry.outputs

    @property
    def num_graphs(self) -> int:
        """Graphs captured and alive."""
        return sum(1 for e in self._entries.values() if e.graph is not None)

    def clear(self) -> None:
        """Drop every graph and static buffer (the next calls capture afresh)."""
        self._entries.clear()

    # -- internals ------------------------------------------------------------------------------

    def _graph_device(self, args: tuple[Any, ...]) -> torch.device | None:
        """The CUDA device to capture on, or None when this call runs eagerly."""
        if not self.enabled:
            return None
        devices = {a.device for a in args if isinstance(a, Tensor)}
        if len(devices) != 1:
            return None  # no tensor, or tensors on several devices
        device = devices.pop()
        return device if device.type == "cuda" or self.simulate else None

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _new_entry(self, key: Signature, args: tuple[Any, ...], device: torch.device) -> _Entry:
        """Capture a graph for ``key`` (the entry stays eager when over budget or on failure)."""
        if self.stats["captures"] >= self.max_captures:
            self._warn("budget", f"GraphedFunction {self.name!r}: more than max_captures={self.max_captures} "
                                 "captures; new signatures run eagerly")
            return _Entry(inputs=[])
        while self.num_graphs >= self.max_graphs:  # drop the least recently used graph
            oldest = next(k for k, e in self._entries.items() if e.graph is not None)
            del self._entries[oldest]
            self.stats["evictions"] += 1
        statics = [a.clone() for a in args if isinstance(a, Tensor)]
        it = iter(statics)
        static_args = tuple(next(it) if isinstance(a, Tensor) else a for a in args)
        entry = _Entry(inputs=statics)
        try:
            entry.graph, entry.outputs = self._capture(static_args, device)
        except Exception as exc:  # noqa: BLE001 - e.g. a host sync inside fn
            warnings.warn(f"GraphedFunction {self.name!r}: capture failed ({type(exc).__name__}: {exc}); this "
                          "signature runs eagerly", RuntimeWarning, stacklevel=3)
            entry.inputs.clear()
            if device.type == "cuda":
                try:
                    torch.cuda.synchronize(device)
                except RuntimeError:  # pragma: no cover - a broken context surfaces at the next call anyway
                    pass
            return entry
        self.stats["captures"] += 1
        self.last_call_captured = True
        return entry

    def _capture(self, static_args: tuple[Any, ...], device: torch.device) -> tuple[Any, Any]:
        if self.simulate:
            outputs = self.fn(*static_args)
            return _SimulatedGraph(self.fn, static_args, outputs), outputs
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        with torch.cuda.device(device):
            # no pool: each graph gets a private one (see "Outputs" in the module docstring)
            return capture_graph(lambda: self.fn(*static_args), stream, self.warmup)
