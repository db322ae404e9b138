"""The fused per-layer ops (rms_norm, add_rms_norm, silu_mul, rope) against their references.

Bitwise equality is asserted wherever the kernels reproduce every rounding of the reference: the
residual sum of ``add_rms_norm``, ``silu_mul`` on CUDA (on CPU torch's vectorised exp may differ
from std::exp in the last float32 bit), and ``rope`` against the key RoPE of ``kv_cache_update``
(queries and cached keys must rotate identically).  The normalised outputs are compared to one unit
in the last place, plus a cap on how many elements may differ at all: the float32 sum of squares is
summed in another order than torch's reduction.  CUDA variants are marked ``cuda`` and skip on CPU.
"""

from __future__ import annotations

import pytest
import torch

import dllm_core.ops as ops
from dllm_core.ops import extension as ext
from dllm_core.ops.rms_norm import add_rms_norm_reference, rms_norm_reference
from dllm_core.ops.rope import apply_rope
from dllm_core.ops.silu_mul import silu_mul_reference

from op_kernels import DEVICES, need_kernel

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# About one (two for the weight product) units in the last place of each dtype.
ULP_TOL = {torch.float32: (1e-6, 1e-6), torch.bfloat16: (1e-5, 1.6e-2), torch.float16: (1e-5, 2e-3)}
# RoPE tolerances: those of tests/test_ops.py's kv_cache_update test (float32 angles at position ~4096).
ROPE_TOL = {torch.float32: (1e-3, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}
HIDDEN = [1, 2, 7, 64, 130, 3584, 4096, 4999]


def _close_to_reference(got: torch.Tensor, want: torch.Tensor, max_differing: float = 0.01) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    atol, rtol = ULP_TOL[got.dtype]
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)
    if got.dtype != torch.float32:  # a last-bit difference of the statistics rarely changes a 16-bit result
        assert (got != want).float().mean().item() <= max_differing


def _norm_inputs(shape, dtype, device, misaligned=False):
    N = shape[-1]
    numel = 1
    for s in shape:
        numel *= s

    def draw():
        t = torch.randn(numel + 1, device=device).to(dtype)
        return (t[1:] if misaligned else t[:-1]).view(shape)
    return draw(), 0.5 * draw(), (1.0 + 0.1 * torch.randn(N, device=device)).to(dtype)


# ---- rms_norm / add_rms_norm -----------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N", HIDDEN)
def test_add_rms_norm_compiled(device, dtype, N):
    need_kernel("add_rms_norm", device)
    x, delta, w = _norm_inputs((3, 11, N), dtype, device)
    s, out = torch.ops.dllm_core.add_rms_norm(x, delta, w, 1e-5)
    ref_s, ref_out = add_rms_norm_reference(x, delta, w, 1e-5)
    assert torch.equal(s, ref_s), "the residual sum must be bit-identical"
    _close_to_reference(out, ref_out)
    _close_to_reference(torch.ops.dllm_core.rms_norm(x, w, 1e-6), rms_norm_reference(x, w, 1e-6))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_layouts(device, dtype):
    """Misaligned rows (the scalar CUDA path), a transposed input, one row, huge and tiny values."""
    need_kernel("rms_norm", device)
    for N in (4096, 3584, 33):
        x, delta, w = _norm_inputs((5, N), dtype, device, misaligned=True)
        s, out = torch.ops.dllm_core.add_rms_norm(x, delta, w, 1e-5)
        ref_s, ref_out = add_rms_norm_reference(x, delta, w, 1e-5)
        assert torch.equal(s, ref_s)
        _close_to_reference(out, ref_out)
    xt = torch.randn(64, 6, device=device).to(dtype).t()  # (6, 64), not contiguous
    w = torch.randn(64, device=device).to(dtype)
    _close_to_reference(torch.ops.dllm_core.rms_norm(xt, w, 1e-5), rms_norm_reference(xt, w, 1e-5))
    scaled = torch.randn(2, 256, device=device).to(dtype) * torch.tensor([[1e-3], [1e2]], device=device).to(dtype)
    w = torch.ones(256, device=device, dtype=dtype)
    _close_to_reference(torch.ops.dllm_core.rms_norm(scaled, w, 1e-5), rms_norm_reference(scaled, w, 1e-5))
    zeros = torch.zeros(1, 100, device=device, dtype=dtype)
    assert torch.equal(torch.ops.dllm_core.rms_norm(zeros, w[:100], 1e-5), zeros)


# ---- silu_mul ----------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inter", [1, 7, 64, 77, 1000, 12288])
def test_silu_mul_compiled(device, dtype, inter):
    need_kernel("silu_mul", device)
    gate_up = (3 * torch.randn(2, 5, 2 * inter, device=device)).to(dtype)
    got, want = torch.ops.dllm_core.silu_mul(gate_up), silu_mul_reference(gate_up)
    if device == "cuda":
        assert torch.equal(got, want), f"{(got != want).sum().item()} of {got.numel()} elements differ"
    else:
        _close_to_reference(got, want)
    odd = (3 * torch.randn(3 * 2 * inter + 1, device=device)).to(dtype)[1:].view(3, 2 * inter)  # misaligned
    got, want = torch.ops.dllm_core.silu_mul(odd), silu_mul_reference(odd)
    if device == "cuda":
        assert torch.equal(got, want)
    else:
        _close_to_reference(got, want)


# ---- rope --------------------------------------------------------------------------------------

ROPE_SHAPES = [  # B, n, H, D, theta (D = 12: the CUDA kernel's scalar path)
    (1, 1, 32, 128, 5e5), (2, 5, 4, 64, 1e4), (3, 16, 2, 12, 1e6), (1, 32, 28, 128, 1e6)]


def _rotated_like_keys(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x rotated by the compiled kv_cache_update (written into a cache at rows 0..n-1)."""
    B, n, H, D = x.shape
    kc = torch.zeros(B, n, H, D, device=x.device, dtype=x.dtype)
    rows = torch.arange(n, device=x.device).expand(B, n).contiguous()
    torch.ops.dllm_core.kv_cache_update(kc, torch.zeros_like(kc), x.contiguous(), x.contiguous(), rows, positions,
                                        theta)
    return kc


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ROPE_SHAPES, ids=str)
def test_rope_compiled(device, dtype, shape):
    need_kernel("rope", device)
    need_kernel("kv_cache_update", device)
    B, n, H, D, theta = shape
    # q sliced from a fused [q; k; v] projection output: strided rows
    qkv = torch.randn(B, n, (H + 4) * D, device=device).to(dtype)
    q = qkv[..., : H * D].view(B, n, H, D)
    positions = torch.randint(0, 4096, (B, n), device=device)
    got = torch.ops.dllm_core.rope(q, positions, theta)
    assert got.is_contiguous() and got.shape == q.shape and got.dtype == dtype
    assert torch.equal(got, _rotated_like_keys(q, positions, theta)), "q must rotate exactly as the cached keys"
    atol, rtol = ROPE_TOL[dtype]
    torch.testing.assert_close(got.float(), apply_rope(q, positions, theta).float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("device", DEVICES)
def test_rope_unaligned_and_transposed(device):
    need_kernel("rope", device)
    x = torch.randn(2 * 3 * 4 * 64 + 1, device=device, dtype=torch.bfloat16)[1:].view(2, 3, 4, 64)
    pos = torch.tensor([[0, 7, 4095], [1, 2, 3]], device=device)
    torch.testing.assert_close(torch.ops.dllm_core.rope(x, pos, 1e4).float(), apply_rope(x, pos, 1e4).float(),
                               atol=2e-2, rtol=2e-2)
    xt = torch.randn(2, 3, 64, 4, device=device).transpose(2, 3)  # last dim strided
    torch.testing.assert_close(torch.ops.dllm_core.rope(xt, pos, 1e4), apply_rope(xt, pos, 1e4),
                               atol=1e-3, rtol=1e-4)


# ---- opcheck, errors, dispatch -------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_fused(device):
    for op in ext.FUSED_OPS:
        need_kernel(op, device)
    x, delta, w = _norm_inputs((2, 3, 130), torch.bfloat16, device)
    torch.library.opcheck(torch.ops.dllm_core.rms_norm.default, (x, w, 1e-5))
    torch.library.opcheck(torch.ops.dllm_core.add_rms_norm.default, (x, delta, w, 1e-5))
    torch.library.opcheck(torch.ops.dllm_core.silu_mul.default, (x,))
    q = torch.randn(2, 3, 4, 64, device=device, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.dllm_core.rope.default, (q, torch.tensor([[0, 5, 9], [1, 2, 3]], device=device),
                                                             1e4))


@pytest.mark.parametrize("device", DEVICES)
def test_fused_op_errors(device):
    need_kernel("rms_norm", device)
    x = torch.randn(2, 8, device=device)
    with pytest.raises(RuntimeError, match="weight must be"):
        torch.ops.dllm_core.rms_norm(x, torch.ones(7, device=device), 1e-5)
    with pytest.raises(RuntimeError, match="share one dtype"):
        torch.ops.dllm_core.rms_norm(x, torch.ones(8, device=device, dtype=torch.half), 1e-5)
    with pytest.raises(RuntimeError, match="delta"):
        torch.ops.dllm_core.add_rms_norm(x, x[:1], torch.ones(8, device=device), 1e-5)
    with pytest.raises(RuntimeError, match="even"):
        torch.ops.dllm_core.silu_mul(torch.randn(2, 7, device=device))
    with pytest.raises(RuntimeError, match="positions"):
        torch.ops.dllm_core.rope(torch.randn(1, 2, 1, 4, device=device), torch.zeros(1, 3, dtype=torch.long,
                                                                                      device=device), 1e4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_dispatch_matches_reference(device, dtype):
    """The public wrappers, whichever path they take."""
    x, delta, w = _norm_inputs((2, 7, 96), dtype, device)
    s, out = ops.add_rms_norm(x, delta, w, 1e-5)
    ref_s, ref_out = add_rms_norm_reference(x, delta, w, 1e-5)
    assert torch.equal(s, ref_s)
    _close_to_reference(out, ref_out)
    _close_to_reference(ops.rms_norm(x, w, 1e-5), rms_norm_reference(x, w, 1e-5))
    _close_to_reference(ops.silu_mul(x), silu_mul_reference(x))
    q = torch.randn(2, 7, 3, 32, device=device).to(dtype)
    pos = torch.randint(0, 100, (2, 7), device=device)
    atol, rtol = ROPE_TOL[dtype]
    torch.testing.assert_close(ops.rope(q, pos, 1e4).float(), apply_rope(q, pos, 1e4).float(), atol=atol, rtol=rtol)


def test_fused_dispatch_falls_back_for_mixed_dtypes_and_gradients():
    x = torch.randn(3, 16)
    w16 = torch.ones(16, dtype=torch.bfloat16)
    assert torch.equal(ops.rms_norm(x, w16, 1e-5), rms_norm_reference(x, w16, 1e-5))  # float32 result, promoted
    w = torch.ones(16, requires_grad=True)
    out = ops.rms_norm(x, w, 1e-5)  # grad needed: the reference runs and autograd works
    out.sum().backward()
    assert w.grad is not None and w.grad.shape == (16,)
    gu = torch.randn(3, 8, requires_grad=True)
    ops.silu_mul(gu).sum().backward()
    assert gu.grad is not None


def test_old_rmsnorm_code_is_the_reference():
    """The reference is what RMSNorm.forward computed before the ops existed."""
    x, w = torch.randn(4, 50).to(torch.bfloat16), (1 + 0.1 * torch.randn(50)).to(torch.bfloat16)
    xf = x.to(torch.float32)
    old = w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)
    assert torch.equal(rms_norm_reference(x, w, 1e-5), old)
