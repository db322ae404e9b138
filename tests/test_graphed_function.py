"""The CUDA-graph facility for pure tensor functions (:mod:`dllm_core.graphed_function`).

CPU tests pin the fallback logic (disabled, CPU tensors, no tensors, mixed devices, capture
failures, budgets) and, with ``simulate=True``, the static-buffer bookkeeping: inputs copied in,
outputs rewritten in place, one entry per signature, least recently used graphs dropped.  CUDA
tests check that replays equal eager calls for several signatures with inputs changing between
replays, that graphs do not overwrite each other's outputs, and the fallback of a capture that
fails.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from dllm_core import GraphedFunction
from dllm_core.graphed_function import signature

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def scaled_topk(scores: Tensor, valid: Tensor, k: int, scale: float) -> tuple[Tensor, Tensor]:
    """A small pure function: a sort, a gather, a reduction; ``k`` and ``scale`` are static."""
    masked = torch.where(valid, scores * scale, torch.full_like(scores, float("-inf")))
    top = torch.sort(masked, dim=-1, descending=True, stable=True).indices[:, :k]
    return torch.sort(top, dim=-1).values, masked.gather(1, top).sum(-1)


@dataclass
class Pair:
    total: Tensor
    cumulative: Tensor


def pair_of(x: Tensor) -> Pair:
    return Pair(total=x.sum(-1), cumulative=x.cumsum(-1))


def _inputs(B: int, T: int, seed: int, device: str = "cpu") -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, generator=g).to(device), (torch.rand(B, T, generator=g) > 0.3).to(device))


def _same(a, b) -> None:
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# -- signatures and fallbacks ----------------------------------------------------------------------

def test_signature_keys_tensors_by_shape_and_values_by_value():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert signature((a, 4)) == signature((b, 4))  # values of tensors do not matter
    assert signature((a, 4)) != signature((a, 5))
    assert signature((a,)) != signature((torch.zeros(3, 2),))
    assert signature((a,)) != signature((a.long(),))
    assert signature((None, (1, 2))) == signature((None, (1, 2)))
    with pytest.raises(TypeError, match="argument 1"):
        signature((a, [1, 2]))


def test_eager_fallbacks_on_cpu():
    x, valid = _inputs(2, 9, 0)
    want = scaled_topk(x, valid, 3, 2.0)
    for fn in (GraphedFunction(scaled_topk), GraphedFunction(scaled_topk, enabled=False)):
        _same(fn(x, valid, 3, 2.0), want)  # CPU tensors, or disabled: a plain call
        assert fn.stats == {"captures": 0, "replays": 0, "eager_calls": 1, "evictions": 0}
        assert fn.num_graphs == 0 and not fn.last_call_captured
    assert GraphedFunction(lambda n: n + 1)(3) == 4  # no tensor argument
    mixed = GraphedFunction(lambda a, b: a.sum(), simulate=True)
    mixed(x, torch.empty(2, device="meta"))  # two devices: eager
    assert mixed.stats["eager_calls"] == 1 and mixed.num_graphs == 0
    with pytest.raises(ValueError):
        GraphedFunction(scaled_topk, max_graphs=0)


# -- the static-buffer path, simulated on CPU --------------------------------------------------------

def test_simulated_replays_follow_new_inputs_per_signature():
    fn = GraphedFunction(scaled_topk, simulate=True)
    shapes = [(2, 9), (3, 17), (2, 9)]
    for step in range(6):
        B, T = shapes[step % 3]
        x, valid = _inputs(B, T, step)
        for k in (2, 4):
            got = fn(x, valid, k, 0.5)
            _same(got, scaled_topk(x, valid, k, 0.5))
    assert fn.stats["captures"] == 4 and fn.num_graphs == 4  # (2, 9) and (3, 17), times k
    assert fn.stats["replays"] == 12 and fn.stats["eager_calls"] == 0


def test_simulated_outputs_are_static_buffers():
    """Outputs of a signature are overwritten by its next call (what a real replay does), and
    dataclass outputs are supported."""
    fn = GraphedFunction(pair_of, simulate=True)
    first = fn(torch.ones(2, 4))
    assert first.total.tolist() == [4.0, 4.0]
    second = fn(torch.full((2, 4), 2.0))
    assert second is first and first.total.tolist() == [8.0, 8.0]
    other = fn(torch.ones(3, 4))  # another signature: its own buffers
    assert other is not first and first.total.tolist() == [8.0, 8.0]


def test_least_recently_used_graphs_are_dropped_and_captures_are_capped():
    fn = GraphedFunction(pair_of, simulate=True, max_graphs=2, max_captures=4)
    for n in (1, 2, 1, 3):  # 2 is the least recently used when 3 arrives
        fn(torch.ones(n, 4))
    assert fn.num_graphs == 2 and fn.stats["evictions"] == 1
    assert {s[0][1] for s, e in fn._entries.items() if e.graph is not None} == {(1, 4), (3, 4)}
    fn(torch.ones(2, 4))  # captured again (4th capture)
    assert fn.stats["captures"] == 4
    with pytest.warns(RuntimeWarning, match="max_captures"):
        out = fn(torch.ones(5, 4))
    assert out.total.tolist() == [4.0] * 5 and fn.stats["eager_calls"] == 1


def test_a_failing_capture_falls_back_to_eager_for_that_signature():
    calls = []

    def fn(x: Tensor) -> Tensor:
        calls.append(x.shape)
        if len(calls) == 1:  # the first capture fails
            raise RuntimeError("cannot capture this")
        return x * 2

    g = GraphedFunction(fn, simulate=True)
    with pytest.warns(RuntimeWarning, match="capture failed"):
        assert g(torch.ones(1, 8)).tolist() == [[2.0] * 8]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert g(torch.ones(1, 8)).tolist() == [[2.0] * 8]  # no second capture attempt, no warning
        assert g(torch.ones(1, 3)).tolist() == [[2.0] * 3]
    assert g.stats["captures"] == 1 and g.stats["eager_calls"] == 2


# -- CUDA ----------------------------------------------------------------------------------------

@cuda
@pytest.mark.cuda
def test_replays_equal_eager_calls_for_several_signatures():
    fn = GraphedFunction(scaled_topk)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(8):
            B, T = [(2, 9), (3, 130), (1, 1000)][step % 3]
            x, valid = _inputs(B, T, step, "cuda")
            for k in (1, 5):
                got = [t.clone() for t in fn(x, valid, k, 1.5)]
                _same(got, scaled_topk(x, valid, k, 1.5))
    assert fn.stats["captures"] == 6 and fn.stats["replays"] == 16 and fn.stats["eager_calls"] == 0


@cuda
@pytest.mark.cuda
def test_graphs_keep_their_outputs_apart():
    """Each graph has its own pool: replaying one never overwrites another's outputs."""
    fn = GraphedFunction(pair_of)
    a = fn(torch.ones(2, 64, device="cuda"))
    b = fn(torch.ones(3, 32, device="cuda"))
    for _ in range(3):
        fn(torch.full((3, 32), 2.0, device="cuda"))
    assert a.total.tolist() == [64.0, 64.0] and b.total.tolist() == [64.0] * 3
    assert fn(torch.full((2, 64), 3.0, device="cuda")) is a and a.total.tolist() == [192.0, 192.0]


def _syncing(x: Tensor) -> Tensor:
    if float(x.sum()) < -1e30:  # a host sync: cannot be captured
        raise AssertionError
    return x * 2


@cuda
@pytest.mark.cuda
def test_uncapturable_function_falls_back_to_eager_on_cuda():
    fn = GraphedFunction(_syncing)
    x = torch.ones(2, 8, device="cuda")
    with pytest.warns(RuntimeWarning, match="capture failed"):
        assert fn(x).tolist() == [[2.0] * 8] * 2
    assert fn(x + 1).tolist() == [[4.0] * 8] * 2
    assert fn.stats["captures"] == 0 and fn.stats["eager_calls"] == 2
    ok = GraphedFunction(scaled_topk)  # the device is usable after the failed capture
    x, valid = _inputs(2, 9, 0, "cuda")
    _same(ok(x, valid, 3, 1.0), scaled_topk(x, valid, 3, 1.0))
