"""CUDA partial_attention with stored scores (``DLLM_CORE_ATTN_PROBS_SCORES=1``) against the reference.

In this mode the main pass (mma.sync or wgmma, any row tile, split or not) writes its scaled, masked scores
and one streaming kernel (csrc/cuda/partial_attention_scores.cu) merges the key splits and sums the
head-mean probabilities from them.  The plan takes it where the (B, H, q, T) float32 scores fit in half the
L2 cache.  Needs a CUDA GPU and the compiled extension; skips otherwise.
"""

from __future__ import annotations

import re

import pytest
import torch

from dllm_core.ops.partial_attention import partial_attention_reference
from op_kernels import HAS_CUDA, check_attention
from test_attention_variants import SHAPES, _clean_env, _inputs, _plan, _run_and_check, _wgmma_device  # noqa: F401

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True, params=["1", "2"], ids=lambda m: f"scores={m}")
def scores_mode(request, _clean_env, monkeypatch):  # after _clean_env (skips without the kernel, clears overrides)
    """1: the stored-scores pass as its own kernel; 2: inside the main pass after a grid barrier (mma.sync
    2-stage main passes whose grid fits the GPU at once; the others fall back to 1)."""
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_SCORES", request.param)
    return request.param


@pytest.mark.parametrize("splits", [None, "1", "3"], ids=lambda s: f"splits={s or 'auto'}")
@pytest.mark.parametrize("main", [None, "32:2", "64:2", "128:2", "32:3", "64:3"], ids=lambda r: f"main={r or 'auto'}")
@pytest.mark.parametrize("shape", SHAPES + [(2, 70, 4, 2, 128, 4160), (1, 5, 300, 300, 64, 9)], ids=str)
def test_stored_scores_variants(capfd, monkeypatch, scores_mode, shape, main, splits):
    """Every main-pass flavour (automatic: wgmma for 128-row tiles on sm_90a; forced mma.sync row tiles)
    x split choice: the scores pass's probabilities and merged outputs, bf16 (contiguous q) and fp16
    (strided q).  H = 300 is past the pass's log-sum-exp table: the plan falls back to recomputing.
    In mode 2 the trace says whether the fused main pass ran: it must for the 2-stage mma.sync passes."""
    if main:  # rows:stages of a forced mma.sync main pass
        monkeypatch.setenv("DLLM_CORE_ATTN_MMA", "sync")
        monkeypatch.setenv("DLLM_CORE_ATTN_ROWS", main.split(":")[0])
        monkeypatch.setenv("DLLM_CORE_ATTN_STAGES", main.split(":")[1])
    if splits:
        monkeypatch.setenv("DLLM_CORE_ATTN_SPLITS", splits)
    monkeypatch.setenv("DLLM_CORE_ATTN_TRACE", "1")
    capfd.readouterr()
    _run_and_check(shape, torch.bfloat16, True)
    err = capfd.readouterr().err
    monkeypatch.delenv("DLLM_CORE_ATTN_TRACE")
    line = next(ln for ln in err.splitlines() if ln.startswith("partial_attention plan:"))
    plan = {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", line)}
    assert plan["probs_scores"] == (int(scores_mode) if shape[2] <= 256 else 0)
    fused = "fused main pass" in err
    assert fused == (plan["probs_scores"] == 2 and plan["mma"] == 0 and plan["stages"] == 2), err
    _run_and_check(shape, torch.float16, True, strided_q=True)


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
    args = _inputs(shape, torch.bfloat16, seed=3)
    B, n, _, _, _, T = shape
    torch.full((B * n * T,), 7.0, device="cuda")  # freed at once: the next (B, n, T) block is dirty
    check_attention(torch.ops.dllm_core.partial_attention(*args, True), partial_attention_reference(*args, True),
                    torch.bfloat16, True)
    static = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.ops.dllm_core.partial_attention(*static, True)  # warm-up off the capture
        with torch.cuda.graph(graph, stream=stream):
            got = torch.ops.dllm_core.partial_attention(*static, True)
    torch.cuda.current_stream().wait_stream(stream)
    for seed in (4, 5):
        fresh = _inputs(shape, torch.bfloat16, seed=seed)
        for dst, src in zip(static[:4], fresh[:4]):
            dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        check_attention(got, partial_attention_reference(*fresh, True), torch.bfloat16, True)


def test_stored_scores_plan(capfd, monkeypatch, scores_mode):
    """Automatic choice: stored scores where the float32 scores fit in half the L2 cache, else the
    recomputing pass; =0 forces the recomputing pass; without probabilities nothing is stored."""
    monkeypatch.delenv("DLLM_CORE_ATTN_PROBS_SCORES")
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    small, big = (1, 32, 32, 32, 128, 512), (16, 128, 32, 32, 128, 4096)
    for shape in (small, big):
        B, n, H, _, _, T = shape
        fits = 4 * B * H * n * (-(-T // 128) * 128) <= l2 / 2
        assert _plan(capfd, monkeypatch, shape, True)["probs_scores"] == (2 if fits else 0)
    assert _plan(capfd, monkeypatch, small, False)["probs_scores"] == 0
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_SCORES", "0")
    assert _plan(capfd, monkeypatch, small, True)["probs_scores"] == 0
