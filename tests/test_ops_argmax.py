"""dllm_core::argmax_confidence: CPU and CUDA kernels against the reference, opcheck, errors, dispatch.

CUDA cases are marked ``cuda`` and skip without a GPU; compiled-kernel cases skip with the reason
when ``dllm_core._C`` is not built.
"""

from __future__ import annotations

import pytest
import torch

import dllm_core.ops as ops
from dllm_core.ops.argmax_confidence import argmax_confidence_reference

from op_kernels import DEVICES, need_kernel, run_error_script

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


# (leading dims, V): one row, odd V, V below one 16-byte vector, 3-D and 4-D leading dims, and
# vocabularies of LLaDA (126464) and Qwen2 / Dream (151936, plus one odd size above it).
ARGMAX_SHAPES = [((1,), 1), ((3,), 7), ((2, 5), 37), ((4, 3), 1001), ((2, 3, 2), 515), ((2, 2, 2, 3), 130),
                 ((3, 2), 126464), ((2,), 151936), ((1, 3), 152063)]


def _check_argmax(got, want, dtype):
    assert got[0].dtype == torch.int64 and got[1].dtype == torch.float32
    assert got[0].shape == want[0].shape and got[1].shape == want[1].shape
    assert torch.equal(got[0].cpu(), want[0].cpu())
    # float32 sums of up to ~1.5e5 terms in another order (and __expf on CUDA): a few ulp.
    torch.testing.assert_close(got[1].cpu(), want[1].cpu(), atol=1e-7, rtol=2e-5, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ARGMAX_SHAPES, ids=str)
def test_argmax_confidence_compiled(device, dtype, shape):
    need_kernel("argmax_confidence", device)
    lead, V = shape
    # Scale 4: peaked rows (probabilities near 1) and flat ones; bf16 rounding also makes exact ties.
    scale = torch.rand(*lead, 1, device=device) * 8
    logits = (torch.randn(*lead, V, device=device) * scale).to(dtype)
    for exclude in (-1, V // 2, V - 1):
        got = torch.ops.dllm_core.argmax_confidence(logits, exclude)
        _check_argmax(got, argmax_confidence_reference(logits, exclude), dtype)
    # the excluded id never wins, even when it holds the maximum
    lf = logits.float()
    top = lf.argmax(-1).flatten()[0].item()
    if V > 1:
        tok, _ = torch.ops.dllm_core.argmax_confidence(logits, top)
        assert tok.flatten()[0].item() != top


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_argmax_confidence_ties_and_degenerate_rows(device, dtype):
    """Ties -> lowest index (across the scalar head, the vectors, the tail and threads); rows with a
    single finite logit (probability 1); all -inf or excluded (token 0, NaN); NaN and +inf rows."""
    need_kernel("argmax_confidence", device)
    V = 5003
    x = torch.randn(8, V, device=device).clamp(-3, 3)
    x[0, [4999, 1234, 3]] = 10.0       # tie: lowest wins
    x[1, [V - 1, 2600]] = 10.0         # tie inside the tail and a vector
    x[2] = float("-inf")
    x[2, 4321] = 0.5                   # one finite logit: probability exactly 1
    x[3] = float("-inf")               # all -inf: token 0, NaN
    x[4] = float("-inf")
    x[4, 17] = 1.0                     # ... and excluded below: like row 3
    x[5, [900, 40]] = float("nan")     # the first NaN wins, probability NaN
    x[6, [3000, 77]] = float("inf")    # +inf: its first index, NaN (exp(inf - inf))
    x[7] = 2.0                         # all equal: token 0, probability 1 / V
    x = x.to(dtype)
    for exclude in (-1, 17):
        got = torch.ops.dllm_core.argmax_confidence(x, exclude)
        want = argmax_confidence_reference(x, exclude)
        _check_argmax(got, want, dtype)
    tok, prob = torch.ops.dllm_core.argmax_confidence(x, 17)
    assert tok.tolist()[:7] == [3, 2600, 4321, 0, 0, 40, 77]
    assert prob[2].item() == 1.0 and prob[3:7].isnan().all()
    assert abs(prob[7].item() - 1.0 / (V - 1)) < 1e-9


@pytest.mark.parametrize("device", DEVICES)
def test_argmax_confidence_strided_views(device):
    """A graph's slice logits[:, :r] (no copy), rows starting off a 16-byte boundary, and a
    non-contiguous last dim (copied)."""
    need_kernel("argmax_confidence", device)
    for dtype in DTYPES:
        buf = (torch.randn(3, 9, 1003, device=device) * 3).to(dtype)
        for view in (buf[:, :5], buf[:, 2:7, 1:], buf[1, :, 3:1000], buf.transpose(1, 2)[:, :40, :7]):
            for exclude in (-1, 2):
                got = torch.ops.dllm_core.argmax_confidence(view, exclude)
                _check_argmax(got, argmax_confidence_reference(view, exclude), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_argmax_confidence_opcheck(device):
    need_kernel("argmax_confidence", device)
    for dtype in DTYPES:
        logits = torch.randn(2, 3, 37, device=device).to(dtype)
        for exclude in (-1, 5):
            torch.library.opcheck(torch.ops.dllm_core.argmax_confidence.default, (logits, exclude))
    torch.library.opcheck(torch.ops.dllm_core.argmax_confidence.default, (torch.randn(0, 5, device=device), -1))


@pytest.mark.parametrize("device", DEVICES)
def test_argmax_confidence_errors_raise(device):
    """Bad inputs raise (in a subprocess, like test_kernel_errors_raise)."""
    need_kernel("argmax_confidence", device)
    run_error_script(device, """
op = torch.ops.dllm_core.argmax_confidence
expect(lambda: op(torch.randn(2, 9, device=dev), 9), "not a vocabulary id")
expect(lambda: op(torch.zeros(2, 9, dtype=torch.int64, device=dev), -1), "float")
expect(lambda: op(torch.zeros(2, 0, device=dev), -1), "V >= 1")
""")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_argmax_confidence_dispatch_matches_reference(device, dtype):
    """The wrapper agrees with the reference whichever path it takes (float64: reference), and the
    reference with the dense softmax definition."""
    logits = (torch.randn(4, 6, 301, device=device) * 3).to(dtype)
    logits[0, 0, 5] = float("-inf")
    for exclude in (-1, 0, 300):
        _check_argmax(ops.argmax_confidence(logits, exclude), argmax_confidence_reference(logits, exclude), dtype)
    tok, prob = argmax_confidence_reference(logits, 3)
    dense = logits.double().clone()
    dense[..., 3] = float("-inf")
    p = torch.softmax(dense, -1)
    assert torch.equal(tok, dense.argmax(-1))
    torch.testing.assert_close(prob.double(), p.max(-1).values, atol=1e-7, rtol=1e-5)
    with pytest.raises(ValueError, match="vocabulary id"):
        ops.argmax_confidence(logits, 301)
