"""CUDA partial_attention with stored scores (``DLLM_CORE_ATTN_PROBS_SCORES=1`` or ``2``) against the reference.

In these modes the main pass (mma.sync or wgmma, any row tile, split or not) writes its scaled, masked scores
as float32 (1) or its exponentials as float16 with their 64-key chunks' running maxima (2), and one streaming
kernel (csrc/cuda/attention_scores.cuh, partial_attention_scores.cu) merges the key splits and sums the
head-mean probabilities from them.  Every test runs in both modes.  Needs a CUDA GPU and the compiled
extension; skips otherwise.
"""

from __future__ import annotations

import pytest
import torch

from op_kernels import HAS_CUDA, check_eager_and_graph
from test_attention_variants import (SHAPES, _check_fully_masked_row, _clean_env, _inputs, _plan,  # noqa: F401
                                     _run_and_check, _wgmma_device)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True, params=[1, 2], ids=lambda m: f"scores={m}")
def scores_mode(request, _clean_env, monkeypatch) -> int:  # after _clean_env (skips without the kernel, clears
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_SCORES", str(request.param))  # the overrides)
    return request.param


@pytest.mark.parametrize("splits", [None, "1", "3"], ids=lambda s: f"splits={s or 'auto'}")
@pytest.mark.parametrize("main", [None, "32:2", "64:2", "128:2", "32:3", "64:3"], ids=lambda r: f"main={r or 'auto'}")
@pytest.mark.parametrize("shape", SHAPES + [(2, 70, 4, 2, 128, 4160), (1, 5, 300, 300, 64, 9)], ids=str)
def test_stored_scores_variants(capfd, monkeypatch, shape, main, splits, scores_mode):
    """Every main-pass flavour (automatic: wgmma for 128-row tiles on sm_90a; forced mma.sync row tiles and
    K/V stages) x split choice: the scores pass's probabilities and merged outputs, bf16 (contiguous q) and
    fp16 (strided q).  H = 300 is past the pass's per-head table: the plan falls back to recomputing."""
    if main:  # rows:stages of a forced mma.sync main pass
        monkeypatch.setenv("DLLM_CORE_ATTN_MMA", "sync")
        monkeypatch.setenv("DLLM_CORE_ATTN_ROWS", main.split(":")[0])
        monkeypatch.setenv("DLLM_CORE_ATTN_STAGES", main.split(":")[1])
    if splits:
        monkeypatch.setenv("DLLM_CORE_ATTN_SPLITS", splits)
    plan = _plan(capfd, monkeypatch, shape, True)
    monkeypatch.delenv("DLLM_CORE_ATTN_TRACE")
    assert plan["probs_scores"] == (scores_mode if shape[2] <= 256 else 0)
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
        _check_fully_masked_row(shape, dtype)


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


def test_stored_scores_plan(capfd, monkeypatch, scores_mode):
    """Automatic choice: for split calls whose float32 scores fit in 1/6 of the L2 cache, stored scores, as
    float16 exponentials behind the mma.sync main pass and float32 behind wgmma; for the others, float16
    exponentials where writing and reading them back moves fewer bytes than re-reading K (2.4 group n <= D),
    else the recomputing pass.  =0 forces the recomputing pass, =1 / =2 a mode; without probabilities nothing
    is stored."""
    monkeypatch.delenv("DLLM_CORE_ATTN_PROBS_SCORES")
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    seen = set()
    for shape in [(1, 32, 32, 32, 128, 512), (1, 64, 28, 4, 128, 1024), (1, 128, 32, 32, 128, 4096),
                  (16, 32, 32, 32, 128, 512), (16, 32, 32, 32, 64, 512), (16, 64, 32, 32, 128, 2048),
                  (2, 32, 4, 4, 128, 100)]:
        B, n, H, Hkv, D, T = shape
        plan = _plan(capfd, monkeypatch, shape, True)
        small = plan["splits"] > 1 and 4 * B * H * n * (-(-T // 128) * 128) <= l2 / 6
        want = (2 if plan["mma"] == 0 else 1) if small else (2 if 2.4 * (H // Hkv) * n <= D else 0)
        assert plan["probs_scores"] == want, (shape, plan)
        seen.add(want)
    assert seen == {0, 2} | ({1} if _wgmma_device() else set())  # the shapes reach every branch
    assert _plan(capfd, monkeypatch, (1, 32, 32, 32, 128, 512), False)["probs_scores"] == 0
    for forced in ("0", str(scores_mode)):
        monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_SCORES", forced)
        assert _plan(capfd, monkeypatch, (16, 64, 28, 4, 128, 512), True)["probs_scores"] == int(forced)
