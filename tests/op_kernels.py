"""What the compiled-op tests share: the device parameters, the tolerances and the partial-attention
checks against its reference (eager and CUDA-graph replay) and the bit-identity check between two variants, the skip when a kernel is not built, and the subprocess runner for error paths (a C++ exception that crashes the interpreter instead of
raising must fail that one test, not the session)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dllm_core.ops import extension as ext

HAS_CUDA = torch.cuda.is_available()
TOL = {torch.float32: (2e-5, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}  # (atol, rtol)
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")])]


def check_attention(got, want, dtype, return_probs) -> None:
    """partial_attention's (out, probs) against the reference's: out within TOL[dtype] in its dtype and
    shape, probs to float32 rounding and (when asked for) summing to 1 per row."""
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got[0].float(), want[0].float(), atol=atol, rtol=rtol)
    assert got[0].dtype == want[0].dtype and got[0].shape == want[0].shape
    torch.testing.assert_close(got[1], want[1], atol=2e-5, rtol=1e-3)
    if return_probs:
        torch.testing.assert_close(got[1].sum(-1), torch.ones_like(got[1][..., 0]), atol=1e-4, rtol=0)


def assert_attention_identical(got, want, return_probs) -> None:
    """Two partial_attention results (out, probs) bit for bit, NaNs (fully masked rows) in the same places."""
    pairs = [(got[0], want[0])] + ([(got[1], want[1])] if return_probs else [])
    for a, b in pairs:
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


def check_eager_and_graph(make_inputs) -> None:
    """CUDA partial_attention with probabilities (bf16) against the reference on ``make_inputs(seed)`` (q, k, v,
    mask, scale): twice eagerly, each time on a probability buffer the allocator hands back dirty, then
    captured in a CUDA graph and replayed on fresh inputs copied into the captured ones."""
    from dllm_core.ops.partial_attention import partial_attention_reference

    args = make_inputs(3)
    want = partial_attention_reference(*args, True)
    B, n, T = args[0].shape[0], args[0].shape[1], args[1].shape[1]
    for _ in range(2):
        torch.full((B * n * T,), 7.0, device="cuda")  # freed at once: the next (B, n, T) block is dirty
        check_attention(torch.ops.dllm_core.partial_attention(*args, True), want, torch.bfloat16, True)
    static = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.ops.dllm_core.partial_attention(*static, True)  # warm-up off the capture
        with torch.cuda.graph(graph, stream=stream):
            got = torch.ops.dllm_core.partial_attention(*static, True)
    torch.cuda.current_stream().wait_stream(stream)
    for seed in (4, 5):  # new inputs copied in, then replayed
        fresh = make_inputs(seed)
        for dst, src in zip(static[:4], fresh[:4]):
            dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        check_attention(got, partial_attention_reference(*fresh, True), torch.bfloat16, True)


def need_kernel(op: str, device: str) -> None:
    """Skip, saying why, unless dllm_core._C is loaded with a ``device`` kernel for ``op``."""
    if not ext.loaded():
        pytest.skip(f"dllm_core._C is not loaded ({ext.extension_status()['error']}); "
                    "build it with `python setup.py build_ext --inplace`")
    if not ext.has_kernel(op, device):
        pytest.skip(f"dllm_core._C has no {device} kernel for {op} (built without CUDA?)")


def run_error_script(device: str, body: str) -> None:
    """Runs ``body`` in a fresh interpreter with ``dev`` (the device) and ``expect(fn, text)`` (``fn()``
    must raise a RuntimeError mentioning ``text``) defined; it must exit cleanly."""
    code = f"""
import torch, dllm_core.ops
dev = "{device}"
def expect(fn, text):
    try:
        fn()
    except RuntimeError as exc:
        assert text in str(exc), str(exc)
        return
    raise AssertionError("no error raised")
{body}
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
