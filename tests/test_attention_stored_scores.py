"""CUDA partial_attention with stored scores (``DLLM_CORE_ATTN_PROBS_SCORES=1``) against the reference.

In this mode the main pass (mma.sync or wgmma, any row tile, split or not) writes its scaled, masked scores
and one streaming kernel (csrc/cuda/attention_scores.cuh, partial_attention_scores.cu) merges the key splits
and sums the head-mean probabilities from them.  The plan takes it for split calls whose (B, H, q, T)
float32 scores fit in 1/6 of the L2 cache.  Needs a CUDA GPU and the compiled extension; skips otherwise.
"""

from __future__ import annotations

import pytest
import torch

from dllm_core.ops.partial_attention import partial_attention_reference
from op_kernels import HAS_CUDA, check_attention, check_eager_and_graph
from test_attention_variants import SHAPES, _clean_env, _inputs, _plan, _run_and_check, _wgmma_device  # noqa: F401

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def _scores_on(_clean_env, monkeypatch):  # after _clean_env (skips without the kernel, clears the overrides)
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_SCORES", "1")


@pytest.mark.parametrize("splits", [None, "1", "3"], ids=lambda s: f"splits={s or 'auto'}")
@pytest.mark.parametrize("main", [None, "32:2", "64:2", "128:2", "32:3", "64:3"], ids=lambda r: f"main={r or 'auto'}")
@pytest.mark.parametrize("shape", SHAPES + [(2, 70, 4, 2, 128, 4160), (1, 5, 300, 300, 64, 9)], ids=str)
def test_stored_scores_variants(capfd, monkeypatch, shape, main, splits):
    """Every main-pass flavour (automatic: wgmma for 128-row tiles on sm_90a; forced mma.sync row tiles and
    K/V stages) x split choice: the scores pass's probabilities and merged outputs, bf16 (contiguous q) and
    fp16 (strided q).  H = 300 is past the pass's log-sum-exp table: the plan falls back to recomputing."""
    if main:  # rows:stages of a forced mma.sync main pass
        monkeypatch.setenv("DLLM_CORE_ATTN_MMA", "sync")
        monkeypatch.setenv("DLLM_CORE_ATTN_ROWS", main.split(":")[0])
        monkeypatch.setenv("DLLM_CORE_ATTN_STAGES", main.split(":")[1])
    if splits:
        monkeypatch.setenv("DLLM_CORE_ATTN_SPLITS", splits)
    plan = _plan(capfd, monkeypatch, shape, True)
    monkeypatch.delenv("DLLM_CORE_ATTN_TRACE")
    assert plan["probs_scores"] == (1 if shape[2] <= 256 else 0)
    for i, dtype in enumerate((torch.bfloat16, torch.float16)):
        _run_and_check(shape, dtype, True, strided_q=(i == 1))


@pytest.mark.parametrize("splits", ["1", "3"])
@pytest.mark.parametrize("mma", ["sync", "wgmma"])
@pytest.mark.parametrize("shape", [(2, 40, 8, 4, 128, 300), (2, 130, 2, 2, 64, 1030), (3, 7, 4, 4, 128, 77)],
                         ids=str)
def test_stored_scores_fully_masked_row(monkeypatch, shape, mma, splits):
    """A batch row with every key masked ends NaN (output and probabilities), the others match."""
    if mma == "wgmma" and not _wgmma_device():
        pytest.skip("the wgmma main pass needs compute capability 9.0 (sm_90a)")
    monkeypatch.setenv("DLLM_CORE_ATTN_MMA", mma)
    monkeypatch.setenv("DLLM_CORE_ATTN_SPLITS", splits)
    for dtype in (torch.bfloat16, torch.float16):
        q, k, v, mask, scale = _inputs(shape, dtype)
        mask[1] = False
        out, probs = torch.ops.dllm_core.partial_attention(q, k, v, mask, scale, True)
        ref_out, ref_probs = partial_attention_reference(q, k, v, mask, scale, True)
        assert out[1].isnan().all() and probs[1].isnan().all()
        keep = [0] + list(range(2, shape[0]))
        check_attention((out[keep], probs[keep]), (ref_out[keep], ref_probs[keep]), dtype, True)


@pytest.mark.parametrize("pdl", ["1", "0"], ids=lambda v: f"pdl={v}")
@pytest.mark.parametrize("mma,splits", [("sync", "1"), ("sync", "3"), ("wgmma", "1"), ("wgmma", "3")], ids=str)
@pytest.mark.parametrize("shape", [(2, 32, 4, 4, 128, 515), (1, 32, 14, 2, 128, 515)], ids=str)
def test_stored_scores_in_cuda_graph(monkeypatch, shape, mma, splits, pdl):
    """Main pass -> scores pass as programmatic dependents or plain successors, replayed in a CUDA graph on
    fresh inputs, with a probability buffer the allocator hands back dirty (the pass stores every element)."""
    if mma == "wgmma" and not _wgmma_device():
        pytest.skip("the wgmma main pass needs compute capability 9.0 (sm_90a)")
    for name, value in (("DLLM_CORE_ATTN_PDL", pdl), ("DLLM_CORE_ATTN_MMA", mma), ("DLLM_CORE_ATTN_SPLITS", splits)):
        monkeypatch.setenv(name, value)
    check_eager_and_graph(lambda seed: _inputs(shape, torch.bfloat16, seed=seed))


def test_stored_scores_plan(capfd, monkeypatch):
    """Automatic choice: stored scores for split calls whose float32 scores fit in 1/6 of the L2 cache, else
    the recomputing pass; =0 forces the recomputing pass; without probabilities nothing is stored."""
    monkeypatch.delenv("DLLM_CORE_ATTN_PROBS_SCORES")
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    for shape in [(1, 32, 32, 32, 128, 512), (1, 64, 28, 4, 128, 1024), (1, 128, 32, 32, 128, 4096),
                  (16, 32, 32, 32, 128, 512), (2, 32, 4, 4, 128, 100)]:
        B, n, H, _, _, T = shape
        plan = _plan(capfd, monkeypatch, shape, True)
        small = plan["splits"] > 1 and 4 * B * H * n * (-(-T // 128) * 128) <= l2 / 6
        assert plan["probs_scores"] == (1 if small else 0), (shape, plan)
    assert _plan(capfd, monkeypatch, (1, 32, 32, 32, 128, 512), False)["probs_scores"] == 0
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_SCORES", "0")
    assert _plan(capfd, monkeypatch, (1, 32, 32, 32, 128, 512), True)["probs_scores"] == 0
