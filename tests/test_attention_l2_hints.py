"""CUDA partial_attention's L2 hints (plan.l2_hints, ``DLLM_CORE_ATTN_L2_HINTS``): evict-first K/V copies in the
main pass and the stored-scores pass dropping the scratch lines it has read.  They change only where lines sit in
the L2, so every result must be bit-identical with and without them.  Needs a CUDA GPU and the compiled
extension; skips otherwise.
"""

from __future__ import annotations

import pytest
import torch

from op_kernels import HAS_CUDA
from test_attention_variants import _clean_env, _inputs, _plan, _wgmma_device  # noqa: F401

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]


def test_l2_hints_plan(capfd, monkeypatch, _clean_env):
    """Default: both hints where one block reads each K/V tile (one row tile per (batch, kv head)) and the call
    reads at most 8 L2s of K/V; only the discard where several row tiles share a tile (GQA) or K/V are larger;
    DLLM_CORE_ATTN_L2_HINTS=0..3 overrides, other values are ignored."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    assert _plan(capfd, monkeypatch, (1, 32, 32, 32, 128, 512), True)["l2_hints"] == 3   # 32 rows, one tile
    assert _plan(capfd, monkeypatch, (1, 64, 28, 4, 128, 1024), True)["l2_hints"] == 2   # 448 rows per kv head
    assert _plan(capfd, monkeypatch, (2, 64, 4, 4, 128, 512), False)["l2_hints"] == 3
    T = 8 * l2 // (4 * 4 * 128) + 64  # 4 kv heads, D = 128: just past 8 L2s of K/V at batch 1
    assert _plan(capfd, monkeypatch, (1, 32, 4, 4, 128, T), False)["l2_hints"] == 2
    for value, want in (("0", 0), ("1", 1), ("3", 3), ("7", 3)):
        monkeypatch.setenv("DLLM_CORE_ATTN_L2_HINTS", value)
        assert _plan(capfd, monkeypatch, (1, 32, 32, 32, 128, 512), True)["l2_hints"] == want


@pytest.mark.parametrize("mma", ["sync", "wgmma"])
@pytest.mark.parametrize("scores", ["0", "1", "2"], ids=lambda s: f"scores={s}")
@pytest.mark.parametrize("splits", ["1", "3"])
@pytest.mark.parametrize("shape", [(2, 32, 4, 4, 128, 515), (1, 40, 8, 2, 64, 1030), (3, 7, 4, 4, 128, 77)], ids=str)
def test_l2_hints_bit_identical(monkeypatch, _clean_env, shape, splits, scores, mma):
    """Outputs and probabilities with every hint (3) equal those without (0) bit for bit, in every stored-scores
    mode, split or not, on both main passes; and again on a second call, whose scratch buffers the allocator
    hands back after the first call's pass dropped their lines."""
    if mma == "wgmma" and not _wgmma_device():
        pytest.skip("the wgmma main pass needs compute capability 9.0 (sm_90a)")
    # One head slice: the recomputing pass's head slices add with atomics, in no fixed order.
    for name, value in (("DLLM_CORE_ATTN_MMA", mma), ("DLLM_CORE_ATTN_SPLITS", splits),
                        ("DLLM_CORE_ATTN_PROBS_SCORES", scores), ("DLLM_CORE_ATTN_HEAD_SLICES", "1")):
        monkeypatch.setenv(name, value)
    args = _inputs(shape, torch.bfloat16)

    def call(hints: str, probs: bool):
        monkeypatch.setenv("DLLM_CORE_ATTN_L2_HINTS", hints)
        got = torch.ops.dllm_core.partial_attention(*args, probs)
        torch.cuda.synchronize()
        return got

    for probs in (False, True):
        want = call("0", probs)
        for _ in range(2):
            got = call("3", probs)
            assert torch.equal(got[0].nan_to_num(), want[0].nan_to_num()), probs
            if probs:
                assert torch.equal(got[1].isnan(), want[1].isnan())
                assert torch.equal(got[1].nan_to_num(), want[1].nan_to_num())
