"""CUDA partial_attention's bulk tensor copies (plan.tma, ``DLLM_CORE_ATTN_TMA``): the wgmma main pass copies its
K/V tiles with the Hopper copy engine (csrc/cuda/tma.cuh) instead of per-thread cp.async.  The tiles hold the same
values in the same shared-memory layout, so every result must be bit-identical with and without; caches a tensor
map cannot describe fall back to cp.async.  Needs compute capability 9.0 (sm_90a) and the compiled extension;
skips otherwise.
"""

from __future__ import annotations

import pytest
import torch
from op_kernels import HAS_CUDA, assert_attention_identical, check_attention
from test_attention_variants import _clean_env, _inputs, _plan, _wgmma_device  # noqa: F401

from dllm_core.ops.partial_attention import partial_attention_reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]


@pytest.fixture
def _tma_device(monkeypatch, _clean_env):  # noqa: F811
    if not _wgmma_device():
        pytest.skip("the wgmma main pass (the one with bulk tensor copies) needs compute capability 9.0 (sm_90a)")
    monkeypatch.setenv("DLLM_CORE_ATTN_MMA", "wgmma")  # with 128-row tiles: every shape below runs it
    monkeypatch.setenv("DLLM_CORE_ATTN_ROWS", "128")


def _call(monkeypatch, args, tma: str, probs: bool):
    monkeypatch.setenv("DLLM_CORE_ATTN_TMA", tma)
    got = torch.ops.dllm_core.partial_attention(*args, probs)
    torch.cuda.synchronize()
    return got


def test_tma_plan(capfd, monkeypatch, _tma_device):
    """Automatic: on with the wgmma pass for GQA and for calls with probabilities, off for MHA without them (measured
    slower there) and with mma.sync always; DLLM_CORE_ATTN_TMA=0/1 overrides on the wgmma pass, other values are
    ignored."""
    monkeypatch.delenv("DLLM_CORE_ATTN_MMA")
    monkeypatch.delenv("DLLM_CORE_ATTN_ROWS")
    gqa, mha, sync = (1, 128, 28, 4, 128, 1024), (1, 128, 32, 32, 128, 1024), (1, 32, 32, 32, 128, 512)

    def mma_tma(shape, probs):
        plan = _plan(capfd, monkeypatch, shape, probs)
        return plan["mma"], plan["tma"]

    assert [mma_tma(gqa, False), mma_tma(gqa, True)] == [(1, 1), (1, 1)]
    assert [mma_tma(mha, False), mma_tma(mha, True)] == [(1, 0), (1, 1)]
    assert [mma_tma(sync, False), mma_tma(sync, True)] == [(0, 0), (0, 0)]
    for value, want in (("0", 0), ("1", 1), ("7", None)):
        monkeypatch.setenv("DLLM_CORE_ATTN_TMA", value)
        assert mma_tma(gqa, True) == (1, 1 if want is None else want)
        assert mma_tma(mha, False) == (1, 0 if want is None else want)
        assert mma_tma(sync, True) == (0, 0)


@pytest.mark.parametrize("grid", [None, "1"], ids=lambda g: f"grid={g or 'auto'}")
@pytest.mark.parametrize("scores", ["0", "1", "2"], ids=lambda s: f"scores={s}")
@pytest.mark.parametrize("splits", ["1", "3"])
@pytest.mark.parametrize("shape", [(2, 32, 4, 4, 128, 515), (1, 40, 8, 2, 64, 1030), (3, 7, 4, 4, 128, 77),
                                   (1, 20, 28, 4, 128, 200), (2, 70, 4, 2, 128, 4160)], ids=str)
def test_tma_bit_identical(capfd, monkeypatch, _tma_device, shape, splits, scores, grid):
    """Outputs and probabilities with bulk copies equal the cp.async ones bit for bit: split or not (a split's
    last 128-key tile running into the next split, the call's last one past T), every stored-scores mode, ragged
    batches, one block looping over every work unit (grid=1: the ring's phases run on across units); and they
    match the reference."""
    # One head slice: the recomputing pass's head slices add with atomics, in no fixed order.
    for name, value in (("DLLM_CORE_ATTN_SPLITS", splits), ("DLLM_CORE_ATTN_PROBS_SCORES", scores),
                        ("DLLM_CORE_ATTN_HEAD_SLICES", "1"), ("DLLM_CORE_ATTN_WGMMA_GRID", grid)):
        if value is not None:
            monkeypatch.setenv(name, value)
    plan = _plan(capfd, monkeypatch, shape, True)
    assert (plan["mma"], plan["tma"]) == (1, 1), plan
    for dtype in (torch.bfloat16, torch.float16):
        args = _inputs(shape, dtype)
        for probs in (False, True):
            got = _call(monkeypatch, args, "1", probs)
            assert_attention_identical(got, _call(monkeypatch, args, "0", probs), probs)
            check_attention(got, partial_attention_reference(*args, probs), dtype, probs)


def _caches(kind: str, shape, dtype):
    """q, k, v, mask, scale with K/V laid out as `kind`: heads-major storage, a slice of a longer cache, or
    one cache shared by the batch (batch stride 0: no tensor map, the cp.async fallback)."""
    B, _, _, Hkv, D, T = shape
    q, k, v, mask, scale = _inputs(shape, dtype)
    if kind == "heads_major":  # (B, Hkv, T, D) storage seen as (B, T, Hkv, D)
        k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (k, v))
    elif kind == "slice":  # the first T rows of a cache of T + 100
        big = [torch.randn(B, T + 100, Hkv, D, device="cuda").to(dtype) for _ in range(2)]
        for b, x in zip(big, (k, v)):
            b[:, :T] = x
        k, v = big[0][:, :T], big[1][:, :T]
    elif kind == "batch_shared":
        k, v = k[:1].expand(B, -1, -1, -1), v[:1].expand(B, -1, -1, -1)
    return q, k, v, mask, scale


@pytest.mark.parametrize("kind", ["heads_major", "slice", "batch_shared"])
def test_tma_cache_layouts(monkeypatch, _tma_device, kind):
    """Caches that are not one contiguous (B, T, Hkv, D) block: the same results with and without bulk copies,
    and the reference's."""
    monkeypatch.setenv("DLLM_CORE_ATTN_HEAD_SLICES", "1")
    shape = (2, 24, 8, 2, 128, 300)
    args = _caches(kind, shape, torch.bfloat16)
    for probs in (False, True):
        got = _call(monkeypatch, args, "1", probs)
        assert_attention_identical(got, _call(monkeypatch, args, "0", probs), probs)
        check_attention(got, partial_attention_reference(*args, probs), torch.bfloat16, probs)
