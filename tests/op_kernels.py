"""What the compiled-op tests share: the device parameters, the skip when a kernel is not built,
and the subprocess runner for error paths (a C++ exception that crashes the interpreter instead of
raising must fail that one test, not the session)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dllm_core.ops import extension as ext

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")])]


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
