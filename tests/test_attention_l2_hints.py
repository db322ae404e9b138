"""CUDA partial_attention's L2 hints (plan.l2_hints, ``DLLM_CORE_ATTN_L2_HINTS``): evict-first K/V copies in the
main pass, evict-last score stores, and the stored-scores pass dropping the scratch lines it has read.  They
change only where lines sit in the L2, so every result must be bit-identical with and without them.  Needs a
CUDA GPU and the compiled extension; skips otherwise.
"""

from __future__ import annotations

import pytest
import torch

from op_kernels import HAS_CUDA, assert_attention_identical
from test_attention_variants import _clean_env, _inputs, _plan, _wgmma_device  # noqa: F401

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]


def test_l2_hints_plan(capfd, monkeypatch, _clean_env):
    """Default: evict-first K/V (1) where one block reads each tile (one row tile per (batch, kv head)) and the
    call reads at most 8 L2s of K/V; the scratch discard (2) always; evict-last stored scores (4) where they fit
    in the L2.  DLLM_CORE_ATTN_L2_HINTS=0..7 overrides, other values are ignored."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    big_T = 8 * l2 // (4 * 4 * 128) + 64  # 4 kv heads, D = 128: just past 8 L2s of K/V at batch 1
    seen = set()
    for shape, probs in [((1, 32, 32, 32, 128, 512), True), ((1, 64, 28, 4, 128, 1024), True),
                         ((2, 64, 4, 4, 128, 512), False), ((1, 32, 4, 4, 128, big_T), False),
                         ((16, 32, 32, 32, 128, 2048), True), ((16, 64, 32, 32, 128, 512), True)]:
        B, n, H, Hkv, D, T = shape
        plan = _plan(capfd, monkeypatch, shape, probs)
        one_tile = -(-n * (H // Hkv) // plan["rows"]) == 1
        stored = plan["probs_scores"] if probs else 0
        stored_bytes = (4 if stored == 1 else 2) * B * H * n * (-(-T // 128) * 128)
        kv_first = one_tile and 4 * B * T * Hkv * D <= 8 * l2
        want = (1 if kv_first else 0) | 2 | (4 if stored and stored_bytes <= l2 else 0)
        assert plan["l2_hints"] == want, (shape, plan)
        seen.add(want)
    assert {2, 3, 6, 7} <= seen  # the shapes reach each bit both ways
    for value, want in (("0", 0), ("1", 1), ("4", 4), ("7", 7), ("9", 7)):
        monkeypatch.setenv("DLLM_CORE_ATTN_L2_HINTS", value)
        assert _plan(capfd, monkeypatch, (1, 32, 32, 32, 128, 512), True)["l2_hints"] == want


@pytest.mark.parametrize("mma", ["sync", "wgmma"])
@pytest.mark.parametrize("scores", ["0", "1", "2"], ids=lambda s: f"scores={s}")
@pytest.mark.parametrize("splits", ["1", "3"])
@pytest.mark.parametrize("shape", [(2, 32, 4, 4, 128, 515), (1, 40, 8, 2, 64, 1030), (3, 7, 4, 4, 128, 77)], ids=str)
def test_l2_hints_bit_identical(monkeypatch, _clean_env, shape, splits, scores, mma):
    """Outputs and probabilities with every hint (7) equal those without (0) bit for bit, in every stored-scores
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
            got = call("7", probs)
            assert_attention_identical(got, want, probs)
