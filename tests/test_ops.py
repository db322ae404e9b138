"""The compiled ops against their plain-PyTorch references, plus torch.library.opcheck.

Tests of the compiled kernels skip (with the reason) when ``dllm_core._C`` is not built; the
tests of the references and of the dispatch wrappers always run.  CUDA variants are marked
``cuda`` and skip without a GPU.  Inputs are fresh random tensors with awkward sizes: one query
row, key counts that are no multiple of any tile (1, 37, 130, 515), ragged batches through the
key mask, GQA and MHA, unsorted cache rows.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import dllm_core.ops as ops
from dllm_core.ops import extension as ext
from dllm_core.ops.certainty_density import certainty_density_topk_reference
from dllm_core.ops.kv_cache_update import kv_cache_update_reference
from dllm_core.ops.partial_attention import partial_attention_reference

from op_kernels import DEVICES, HAS_CUDA, TOL, check_attention, need_kernel, run_error_script

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (atol, rtol) of the attention output and the rotated keys, per dtype; probabilities are float32.


def _key_mask(B: int, T: int, device: str) -> torch.Tensor:
    """Ragged batch: row 0 full, row 1 a short valid prefix (padding), others ~15% random keys."""
    mask = torch.rand(B, T, device=device) < 0.15
    mask[0] = True
    if B > 1:
        mask[1] = torch.arange(T, device=device) < max(1, T // 5)
    mask[torch.arange(B, device=device), torch.randint(0, T, (B,), device=device)] = True  # >= 1 key per row
    return mask


# ---- partial attention ----------------------------------------------------------------------

ATTN_SHAPES = [  # B, q, H, Hkv, D, T
    (1, 1, 4, 4, 64, 1),
    (2, 1, 4, 1, 64, 37),
    (3, 7, 8, 2, 64, 130),
    (3, 5, 4, 4, 128, 515),
    (2, 9, 14, 2, 128, 130),  # Dream-like GQA group of 7
]


def _attn_inputs(shape, dtype, device):
    B, n, H, Hkv, D, T = shape
    q = torch.randn(B, n, H, D, device=device).to(dtype)
    k = torch.randn(B, T, Hkv, D, device=device).to(dtype)
    v = torch.randn(B, T, Hkv, D, device=device).to(dtype)
    return q, k, v, _key_mask(B, T, device), D ** -0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=str)
@pytest.mark.parametrize("return_probs", [False, True])
def test_partial_attention_compiled(device, dtype, shape, return_probs):
    need_kernel("partial_attention", device)
    if device == "cuda" and (dtype not in ext.CUDA_ATTENTION_DTYPES or shape[4] not in ext.CUDA_ATTENTION_HEAD_DIMS):
        pytest.skip("outside the CUDA kernel's contract (the wrapper uses the reference)")
    args = _attn_inputs(shape, dtype, device)
    got = torch.ops.dllm_core.partial_attention(*args, return_probs)
    check_attention(got, partial_attention_reference(*args, return_probs), dtype, return_probs)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(1, 3, 32, 32, 128, 1030), (2, 40, 28, 4, 128, 515), (1, 130, 8, 8, 64, 37),
                                   (4, 64, 32, 32, 128, 300)], ids=str)
def test_partial_attention_cuda_grids(shape):
    """Shapes that exercise the key splits, several row tiles and the sliced probability pass."""
    need_kernel("partial_attention", "cuda")
    for dtype in (torch.bfloat16, torch.float16):
        args = _attn_inputs(shape, dtype, "cuda")
        for return_probs in (False, True):
            got = torch.ops.dllm_core.partial_attention(*args, return_probs)
            check_attention(got, partial_attention_reference(*args, return_probs), dtype, return_probs)


@pytest.mark.parametrize("device", DEVICES)
def test_partial_attention_strided_views(device):
    """q sliced out of a fused projection, caches as a prefix of a longer buffer."""
    need_kernel("partial_attention", device)
    B, n, H, Hkv, D, T = 2, 6, 8, 2, 64, 77
    qkv = torch.randn(B, n, (H + 2 * Hkv) * D, device=device, dtype=torch.bfloat16)
    q = qkv[..., : H * D].view(B, n, H, D)
    k = torch.randn(B, T + 50, Hkv, D, device=device, dtype=torch.bfloat16)[:, :T]
    v = torch.randn(B, T + 50, Hkv, D, device=device, dtype=torch.bfloat16)[:, :T]
    args = (q, k, v, _key_mask(B, T, device), 0.125)
    got = torch.ops.dllm_core.partial_attention(*args, True)
    check_attention(got, partial_attention_reference(*args, True), torch.bfloat16, True)


@pytest.mark.parametrize("device", DEVICES)
def test_partial_attention_fully_masked_row_is_nan_like_reference(device):
    need_kernel("partial_attention", device)
    args = list(_attn_inputs((2, 3, 4, 2, 64, 37), torch.bfloat16, device))
    args[3][1] = False
    out, probs = torch.ops.dllm_core.partial_attention(*args, True)
    ref_out, ref_probs = partial_attention_reference(*args, True)
    assert out[1].isnan().all() and probs[1].isnan().all()
    assert ref_out[1].isnan().all() and ref_probs[1].isnan().all()
    check_attention((out[:1], probs[:1]), (ref_out[:1], ref_probs[:1]), torch.bfloat16, True)


# ---- kv cache update ------------------------------------------------------------------------

KV_SHAPES = [  # B, q, T, Hkv, D, theta (D = 12: the CUDA kernel's scalar path)
    (1, 1, 37, 2, 64, 1e4), (2, 5, 130, 4, 128, 5e5), (3, 16, 515, 2, 12, 1e6)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", KV_SHAPES, ids=str)
def test_kv_cache_update_compiled(device, dtype, shape):
    need_kernel("kv_cache_update", device)
    B, n, T, Hkv, D, theta = shape
    k_cache = torch.randn(B, T, Hkv, D, device=device).to(dtype)
    v_cache = torch.randn(B, T, Hkv, D, device=device).to(dtype)
    k = torch.randn(B, n, Hkv, D, device=device).to(dtype)
    v = torch.randn(B, n, Hkv, D, device=device).to(dtype)
    rows = torch.stack([torch.randperm(T, device=device)[:n] for _ in range(B)])  # unsorted, distinct
    positions = torch.randint(0, 4096, (B, n), device=device)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    kv_cache_update_reference(want_k, want_v, k, v, rows, positions, theta)
    torch.ops.dllm_core.kv_cache_update(k_cache, v_cache, k, v, rows, positions, theta)
    # float32: the reference's own angles (pos * inv_freq in float32, pow rounded per device) are
    # only good to ~pos * 2^-24 rad, about 2.4e-4 at position 4096.
    atol, rtol = (1e-3, 1e-4) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(k_cache.float(), want_k.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(v_cache, want_v, atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_errors_raise(device):
    """Invalid inputs raise RuntimeError.  Run in a subprocess: a C++ exception that crashes the
    interpreter instead (seen once with a foreign toolchain) must fail this test, not the session."""
    need_kernel("kv_cache_update", device)
    run_error_script(device, """
c = torch.zeros(1, 8, 1, 4, device=dev)
x = torch.ones(1, 1, 1, 4, device=dev)
rows = torch.tensor([[2]], device=dev)
expect(lambda: torch.ops.dllm_core.kv_cache_update(c, c.clone(), x, x.half(), rows, rows, 1e4), "one dtype")
if dev == "cpu":
    expect(lambda: torch.ops.dllm_core.kv_cache_update(c, c.clone(), x, x, rows + 6, rows, 1e4), "out of range")
else:
    q = torch.ones(1, 1, 1, 4, device=dev)
    expect(lambda: torch.ops.dllm_core.partial_attention(q, c, c, c[..., 0, 0] > 0, 1.0, False), "bfloat16/float16")
""")


# ---- certainty density top-k ----------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("G", [1, 37, 130, 515])
@pytest.mark.parametrize("sigma,k", [(10.0, 32), (2.5, 1), (10.0, 64)])
def test_certainty_density_topk_compiled(device, G, sigma, k):
    need_kernel("certainty_density_topk", device)
    B = 4
    known = torch.rand(B, G, device=device) < torch.tensor([0.1, 0.5, 0.9, 0.0], device=device)[:, None]
    known[1, -1] = True  # row 1: the right side counts as known
    candidates = ~known & (torch.rand(B, G, device=device) < 0.7)
    confidence = torch.rand(B, G, device=device, dtype=torch.bfloat16 if G == 37 else torch.float32)
    scores, top = torch.ops.dllm_core.certainty_density_topk(known, confidence, candidates, sigma, k)
    ref_scores, ref_top = certainty_density_topk_reference(known, confidence, candidates, sigma, k)
    torch.testing.assert_close(scores, ref_scores, atol=1e-6, rtol=1e-5)
    assert top.shape == ref_top.shape and top.dtype == torch.int64
    # Near-ties may order differently at float32 rounding: compare the reference scores selected.
    torch.testing.assert_close(ref_scores.gather(1, top), ref_scores.gather(1, ref_top), atol=1e-6, rtol=1e-5)
    assert all(len(set(r.tolist())) == r.numel() for r in top)


@pytest.mark.parametrize("device", DEVICES)
def test_certainty_density_topk_ties_and_completion(device):
    """Exact ties go to the lower column; short rows are completed with non-candidates, lowest first."""
    need_kernel("certainty_density_topk", device)
    G = 300
    known = torch.zeros(2, G, dtype=torch.bool, device=device)
    candidates = torch.zeros(2, G, dtype=torch.bool, device=device)
    candidates[0, 100:] = True  # far from every known column: density exactly 0, all scores tie
    candidates[1, [200, 50, 3, 120, 7]] = True
    confidence = torch.full((2, G), 0.5, device=device)
    scores, top = torch.ops.dllm_core.certainty_density_topk(known, confidence, candidates, 10.0, 8)
    ref_scores, ref_top = certainty_density_topk_reference(known, confidence, candidates, 10.0, 8)
    assert top[0].tolist() == list(range(100, 108)) == ref_top[0].tolist()
    assert top[1].tolist() == ref_top[1].tolist() == [3, 7, 50, 120, 200, 0, 1, 2]
    torch.testing.assert_close(scores, ref_scores, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("G", [1000, 4096, 5000, 16384])
@pytest.mark.parametrize("k", [1, 32, 33, 600, "half+1"])
def test_certainty_density_topk_large_rows(device, G, k):
    """Long rows, exact ties and few candidates: the top-k is exactly a stable sort of the op's own scores.

    Covers the CUDA selection paths (one-warp sort for k <= 32, block sort of the selected keys,
    full sort for k > half the padded row).
    """
    need_kernel("certainty_density_topk", device)
    k = G // 2 + 1 if k == "half+1" else k
    g = torch.Generator(device="cpu").manual_seed(G + k)
    known = torch.zeros(4, G, dtype=torch.bool)
    candidates = torch.zeros(4, G, dtype=torch.bool)
    candidates[0, torch.randperm(G, generator=g)[:5]] = True  # few candidates: completed by non-candidates
    candidates[1, 200:] = True  # density exactly 0 beyond the prompt's reach: all scores tie at 0
    known[2] = torch.rand(G, generator=g) < 0.3  # quantised confidence: many exact ties
    candidates[2] = ~known[2]
    known[3] = torch.rand(G, generator=g) < 0.5
    candidates[3] = ~known[3] & (torch.rand(G, generator=g) < 0.8)
    confidence = torch.rand(4, G, generator=g)
    confidence[2] = (confidence[2] * 4).floor() / 4
    known, candidates, confidence = known.to(device), candidates.to(device), confidence.to(device)
    scores, top = torch.ops.dllm_core.certainty_density_topk(known, confidence, candidates, 10.0, k)
    ref_scores, _ = certainty_density_topk_reference(known, confidence, candidates, 10.0, k)
    torch.testing.assert_close(scores, ref_scores, atol=1e-6, rtol=1e-5)
    want = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : min(k, G)]
    assert top.shape == want.shape and top.dtype == torch.int64
    assert torch.equal(top, want)


# ---- opcheck --------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op in ext.OPS:
        need_kernel(op, device)
    q, k, v, mask, scale = _attn_inputs((2, 3, 4, 2, 64, 37), torch.bfloat16, device)
    for return_probs in (False, True):
        torch.library.opcheck(torch.ops.dllm_core.partial_attention.default, (q, k, v, mask, scale, return_probs))
    rows = torch.tensor([[5, 1, 30], [0, 36, 2]], device=device)
    torch.library.opcheck(torch.ops.dllm_core.kv_cache_update.default,
                          (k.clone(), v.clone(), k[:, :3].clone(), v[:, :3].clone(), rows, rows + 7, 1e4))
    known = torch.rand(2, 37, device=device) < 0.4
    torch.library.opcheck(torch.ops.dllm_core.certainty_density_topk.default,
                          (known, torch.rand(2, 37, device=device), ~known, 10.0, 8))


# ---- references and dispatch (always run) ---------------------------------------------------

def test_extension_status_shape():
    status = ops.extension_status()
    assert set(status) == {"loaded", "error", "ops"} and set(status["ops"]) == set(ext.OPS)
    assert (status["error"] is None) == status["loaded"]
    for paths in status["ops"].values():
        assert paths["cpu"] in ("compiled", "reference")
        assert paths["cuda"] in ("compiled", "reference", "unavailable")


def test_disable_extension_env_forces_references():
    env = dict(os.environ, DLLM_CORE_DISABLE_EXTENSION="1")
    code = "import dllm_core.ops as o, json; print(json.dumps(o.extension_status()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert '"loaded": false' in out and '"compiled"' not in out and "DLLM_CORE_DISABLE_EXTENSION" in out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dispatch_matches_reference(device, dtype):
    """The public wrappers agree with the references whichever path they take (fp32 on CUDA: reference)."""
    args = _attn_inputs((2, 4, 8, 2, 64, 130), dtype, device)
    check_attention(ops.partial_attention(*args, True), partial_attention_reference(*args, True), dtype, True)
    out, probs = ops.partial_attention(*args)
    assert probs.numel() == 0 and out.shape == args[0].shape

    k_cache, v_cache = (torch.randn(2, 130, 2, 64, device=device).to(dtype) for _ in range(2))
    k, v = (torch.randn(2, 4, 2, 64, device=device).to(dtype) for _ in range(2))
    rows = torch.tensor([[9, 3, 129, 0], [5, 6, 7, 100]], device=device)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    kv_cache_update_reference(want_k, want_v, k, v, rows, rows + 3, 5e5)
    ops.kv_cache_update(k_cache, v_cache, k, v, rows, rows + 3, 5e5)
    torch.testing.assert_close(k_cache.float(), want_k.float(), atol=TOL[dtype][0], rtol=TOL[dtype][1])
    torch.testing.assert_close(v_cache, want_v)

    known = torch.rand(3, 130, device=device) < 0.3
    candidates = ~known
    confidence = torch.rand(3, 130, device=device).to(dtype)
    scores, top = ops.certainty_density_topk(known, confidence, candidates, 10.0, 32)
    ref_scores, ref_top = certainty_density_topk_reference(known, confidence, candidates, 10.0, 32)
    torch.testing.assert_close(scores, ref_scores, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ref_scores.gather(1, top), ref_scores.gather(1, ref_top), atol=1e-6, rtol=1e-5)


def test_dispatch_falls_back_on_mixed_dtypes():
    q = torch.randn(1, 2, 4, 16)
    k = torch.randn(1, 9, 2, 16, dtype=torch.bfloat16)
    mask = torch.ones(1, 9, dtype=torch.bool)
    out, _ = ops.partial_attention(q, k, k, mask, 0.25)
    torch.testing.assert_close(out, partial_attention_reference(q, k, k, mask, 0.25, False)[0])


def test_references_agree_with_dense_definitions():
    """Independent checks of the references themselves (float64, explicit formulas)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 2, 8), torch.randn(1, 5, 1, 8), torch.randn(1, 5, 1, 8)
    mask = torch.tensor([[True, False, True, True, False]])
    out, probs = partial_attention_reference(q, k, v, mask, 0.5, True)
    s = torch.einsum("qhd,td->hqt", q[0].double(), k[0, :, 0].double()) * 0.5
    p = torch.softmax(s.masked_fill(~mask[0], float("-inf")), -1)
    torch.testing.assert_close(probs[0].double(), p.mean(0))
    torch.testing.assert_close(out[0].double(), torch.einsum("hqt,td->qhd", p, v[0, :, 0].double()), atol=1e-6, rtol=1e-5)

    G, sigma = 40, 3.0
    known = torch.rand(1, G) < 0.5
    dens = ops.certainty_density_reference(known, sigma)[0].double()
    ext_known = lambda j: 1.0 if j < 0 else float(known[0, min(j, G - 1)])  # noqa: E731
    R = 15
    w = [torch.exp(torch.tensor(-(d * d) / (2 * sigma * sigma), dtype=torch.float64)) for d in range(-R, R + 1)]
    for i in (0, 7, G - 1):
        want = sum(w[d + R] * ext_known(i + d) for d in range(-R, R + 1)) / sum(w)
        assert abs(float(dens[i]) - float(want)) < 1e-5
