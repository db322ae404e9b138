"""CUDA partial_attention's bulk tensor copies (plan.tma, ``DLLM_CORE_ATTN_TMA``): both main passes copy their
K/V tiles with the Hopper copy engine (csrc/cuda/tma.cuh) instead of per-thread cp.async.  The tiles hold the same
values in another shared-memory layout and the MMAs consume them in the same order, so every result must be
bit-identical with and without; caches a tensor map cannot describe fall back to cp.async.  Needs compute
capability 9.0+ and the compiled extension; skips otherwise.
"""

from __future__ import annotations

import pytest
import torch
from op_kernels import HAS_CUDA, check_attention
from test_attention_variants import _clean_env, _inputs, _plan, _wgmma_device  # noqa: F401

from dllm_core.ops.partial_attention import partial_attention_reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]


@pytest.fixture
def _tma_device(_clean_env):  # noqa: F811
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("bulk tensor copies need compute capability 9.0+")


def _call(monkeypatch, args, tma: str, probs: bool):
    monkeypatch.setenv("DLLM_CORE_ATTN_TMA", tma)
    got = torch.ops.dllm_core.partial_attention(*args, probs)
    torch.cuda.synchronize()
    return got


def _assert_identical(got, want, probs: bool) -> None:
    assert torch.equal(got[0].isnan(), want[0].isnan())
    assert torch.equal(got[0].nan_to_num(), want[0].nan_to_num())
    if probs:
        assert torch.equal(got[1].isnan(), want[1].isnan())
        assert torch.equal(got[1].nan_to_num(), want[1].nan_to_num())


def test_tma_plan(capfd, monkeypatch, _tma_device):
    """On by default on compute capability 9.0+; DLLM_CORE_ATTN_TMA=0 turns it off, other values are ignored."""
    shape = (1, 32, 32, 32, 128, 512)
    assert _plan(capfd, monkeypatch, shape, True)["tma"] == 1
    for value, want in (("0", 0), ("1", 1), ("7", 1)):
        monkeypatch.setenv("DLLM_CORE_ATTN_TMA", value)
        assert _plan(capfd, monkeypatch, shape, True)["tma"] == want


# (main pass, rows, K/V stages): every mma.sync row tile and ring depth, and the wgmma pass.
VARIANTS = [("sync", "32", "2"), ("sync", "32", "3"), ("sync", "64", "2"), ("sync", "64", "3"),
            ("sync", "128", "2"), ("sync", "128", "3"), ("wgmma", None, None)]


@pytest.mark.parametrize("scores", ["0", "1", "2"], ids=lambda s: f"scores={s}")
@pytest.mark.parametrize("splits", ["1", "3"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(x for x in v if x))
@pytest.mark.parametrize("shape", [(2, 32, 4, 4, 128, 515), (1, 40, 8, 2, 64, 1030), (3, 7, 4, 4, 128, 77),
                                   (1, 20, 28, 4, 128, 200)], ids=str)
def test_tma_bit_identical(monkeypatch, _tma_device, shape, variant, splits, scores):
    """Outputs and probabilities with bulk copies equal the cp.async ones bit for bit, on every main-pass
    variant, split or not (the last tile of a split or of T partly past the keys), every stored-scores mode,
    ragged batches; and they match the reference."""
    mma, rows, stages = variant
    if mma == "wgmma" and not _wgmma_device():
        pytest.skip("the wgmma main pass needs compute capability 9.0 (sm_90a)")
    # One head slice: the recomputing pass's head slices add with atomics, in no fixed order.
    for name, value in (("DLLM_CORE_ATTN_MMA", mma), ("DLLM_CORE_ATTN_ROWS", rows), ("DLLM_CORE_ATTN_STAGES", stages),
                        ("DLLM_CORE_ATTN_SPLITS", splits), ("DLLM_CORE_ATTN_PROBS_SCORES", scores),
                        ("DLLM_CORE_ATTN_HEAD_SLICES", "1")):
        if value is not None:
            monkeypatch.setenv(name, value)
    for dtype in (torch.bfloat16, torch.float16):
        args = _inputs(shape, dtype)
        for probs in (False, True):
            got = _call(monkeypatch, args, "1", probs)
            _assert_identical(got, _call(monkeypatch, args, "0", probs), probs)
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


@pytest.mark.parametrize("mma", ["sync", "wgmma"])
@pytest.mark.parametrize("kind", ["heads_major", "slice", "batch_shared"])
def test_tma_cache_layouts(monkeypatch, _tma_device, kind, mma):
    """Caches that are not one contiguous (B, T, Hkv, D) block: the same results with and without bulk copies,
    and the reference's."""
    if mma == "wgmma" and not _wgmma_device():
        pytest.skip("the wgmma main pass needs compute capability 9.0 (sm_90a)")
    monkeypatch.setenv("DLLM_CORE_ATTN_MMA", mma)
    monkeypatch.setenv("DLLM_CORE_ATTN_HEAD_SLICES", "1")
    shape = (2, 24, 8, 2, 128, 300)
    args = _caches(kind, shape, torch.bfloat16)
    for probs in (False, True):
        got = _call(monkeypatch, args, "1", probs)
        _assert_identical(got, _call(monkeypatch, args, "0", probs), probs)
        check_attention(got, partial_attention_reference(*args, probs), torch.bfloat16, probs)
