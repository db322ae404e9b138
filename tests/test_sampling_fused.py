"""dllm_core.sampling on logits in the model's dtype: the fused greedy path against the float32 one.

The greedy max-probability confidence now goes through ``ops.argmax_confidence`` on the logits
as the model returns them (bfloat16 for real checkpoints) instead of a float32 copy; the sampling
paths were rewritten to reuse their buffers.  Checked here: the fused path gives the float32
path's tokens exactly and its confidences to float32 rounding; the rewritten paths give
bit-identical results to the previous implementation (copied below as the oracle); and whole
generations of every built-in scheduler agree between the two greedy paths on a bfloat16 model.
"""

from __future__ import annotations

import pytest
import torch

import dllm_core.ops as ops
from dllm_core import Engine
from dllm_core.sampling import choose_tokens, gumbel_argmax, sample_plain_confidence, top_k_filter, top_p_filter
from dllm_core.testing.tiny import make_tiny_model

from op_kernels import DEVICES, HAS_CUDA

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


# ---- the float32 implementation these functions had before the fused path (the oracle) -------

def _old_gumbel_argmax(logits, generator):
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    return (logits.float() - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(dim=-1)


def _old_plain(logits, temperature=0.0, generator=None):
    logits = logits.float()
    tokens = _old_gumbel_argmax(logits / temperature, generator) if temperature > 0 else logits.argmax(-1)
    conf = (logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)).exp()
    return tokens, conf


def _old_choose(logits, temperature=0.0, generator=None, top_p=None, top_k=None, confidence="max_prob"):
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    if top_k is not None and top_k > 0:
        logits = top_k_filter(logits, top_k)
    tokens = _old_gumbel_argmax(logits, generator) if temperature > 0 else logits.argmax(dim=-1)
    logp = torch.log_softmax(logits, dim=-1)
    if confidence == "max_prob":
        return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).exp()
    if confidence == "margin":
        top2 = torch.topk(logp, 2, dim=-1).values.exp()
        return tokens, top2[..., 0] - top2[..., 1]
    p = logp.exp()
    return tokens, (p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


def _logits(dtype, shape=(3, 9), V=1001, mask_id=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(*shape, 1, generator=g) * 6  # peaked and flat rows
    x = (torch.randn(*shape, V, generator=g) * scale).to(dtype)
    x[..., V - 1 if mask_id is None else mask_id] = float("-inf")  # as the engine masks the mask id
    return x


# ---- greedy: fused vs float32 --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V", [37, 1001, 126464])
def test_greedy_fused_equals_float32_path(dtype, V):
    logits = _logits(dtype, V=V, mask_id=V // 3)
    want_tok, want_conf = _old_plain(logits)
    for got_tok, got_conf in (sample_plain_confidence(logits), choose_tokens(logits),
                              choose_tokens(logits, top_p=1.0, top_k=0), choose_tokens(logits, top_k=V)):
        assert torch.equal(got_tok, want_tok) and got_conf.dtype == torch.float32
        torch.testing.assert_close(got_conf, want_conf, atol=1e-7, rtol=2e-5)
    # Against float64: the fused confidence is closer than either float32 formula was (the old
    # log_softmax path of choose_tokens was off by up to 3e-5 relative at V = 126464).
    exact = torch.softmax(logits.double(), -1).max(-1).values
    torch.testing.assert_close(choose_tokens(logits)[1].double(), exact, atol=1e-9, rtol=2e-6)
    torch.testing.assert_close(_old_choose(logits)[1], choose_tokens(logits)[1], atol=1e-7, rtol=1e-4)


def test_greedy_fused_reads_no_float32_copy(monkeypatch):
    """The greedy paths hand the logits to the fused op as they are (no upcast on the way)."""
    seen = []

    def spy(logits, exclude=-1):
        seen.append(logits.dtype)
        return ops.argmax_confidence_reference(logits, exclude)

    monkeypatch.setattr(ops, "argmax_confidence", spy)
    logits = _logits(torch.bfloat16)
    sample_plain_confidence(logits)
    choose_tokens(logits)
    assert seen == [torch.bfloat16, torch.bfloat16]


# ---- the other paths: unchanged bit for bit --------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sampling_paths_unchanged(dtype):
    logits = _logits(dtype)
    before = logits.clone()
    for t in (0.5, 1.0):
        a = sample_plain_confidence(logits, temperature=t, generator=torch.Generator().manual_seed(1))
        b = _old_plain(logits, t, torch.Generator().manual_seed(1))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for t, top_p, top_k, kind in [(0.0, 0.9, None, "max_prob"), (0.0, None, 5, "max_prob"), (0.0, None, None, "margin"),
                                  (0.0, None, None, "neg_entropy"), (0.7, None, None, "max_prob"),
                                  (1.0, 0.8, 20, "margin"), (0.4, 0.95, None, "neg_entropy")]:
        a = choose_tokens(logits, temperature=t, generator=torch.Generator().manual_seed(2), top_p=top_p, top_k=top_k,
                          confidence=kind)
        b = _old_choose(logits, t, torch.Generator().manual_seed(2), top_p, top_k, kind)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (t, top_p, top_k, kind)
    race = gumbel_argmax(logits, torch.Generator().manual_seed(3))
    assert torch.equal(race, _old_gumbel_argmax(logits, torch.Generator().manual_seed(3)))
    assert torch.equal(logits, before)  # inputs are never written


# ---- whole generations on a bfloat16 model --------------------------------------------------------

def _float32_greedy(logits, exclude=-1):
    """The greedy confidence the float32 path computed (argmax, exp(logit - logsumexp))."""
    lf = logits.float().clone()
    if exclude >= 0:
        lf[..., exclude] = float("-inf")
    tok = lf.argmax(-1)
    return tok, (lf.gather(-1, tok.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lf, -1)).exp()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family,cache,scheduler", [
    ("llada", "none", "low_confidence"), ("llada", "prefix", "threshold"), ("llada", "dual", "factor"),
    ("llada", "d2cache", "low_confidence"), ("llada", "d2cache", "certainty_prior"),
    ("dream", "none", "maskgit_plus"), ("dream", "prefix", "threshold"), ("dream", "freecache", "factor")])
def test_generation_on_bf16_model_matches_float32_greedy(family, cache, scheduler, device, monkeypatch):
    model = make_tiny_model(family, seed=5, dtype=torch.bfloat16)
    prompts = [[3, 4, 5, 6, 7], [9, 10]]

    def run():
        eng = Engine(model=model, cache=cache, scheduler=scheduler, device=device)
        return eng.generate_ids(prompts, gen_length=16, block_length=8)

    fused = run()
    monkeypatch.setattr(ops, "argmax_confidence", _float32_greedy)
    upcast = run()
    assert fused.token_ids == upcast.token_ids and fused.nfe == upcast.nfe


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_greedy_confidence_allocates_no_rows_by_vocab_buffer_cuda():
    """Batch 16 x 32 rows of LLaDA's vocabulary in bfloat16: the greedy paths allocate only their
    outputs (the float32 path held 2 x 259 MB), and agree with the float32 path."""
    from dllm_core.ops import extension as ext

    if not ext.has_kernel("argmax_confidence", "cuda"):
        pytest.skip("dllm_core._C has no CUDA kernel for argmax_confidence")
    logits = (torch.randn(16, 32, 126464, device="cuda") * 4).to(torch.bfloat16)
    logits[..., 126336] = float("-inf")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    tok, conf = sample_plain_confidence(logits)
    tok2, conf2 = choose_tokens(logits)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < (1 << 20)
    want_tok, want_conf = _old_plain(logits)
    assert torch.equal(tok, want_tok) and torch.equal(tok2, want_tok)
    torch.testing.assert_close(conf, want_conf, atol=1e-7, rtol=2e-5)
    torch.testing.assert_close(conf2, want_conf, atol=1e-7, rtol=2e-5)
