"""The compiled extension ``dllm_core._C``: loading it once, and what it provides.

``import dllm_core`` never needs the extension: when it is missing, fails to load (built against
another torch, say) or is disabled with ``DLLM_CORE_DISABLE_EXTENSION=1``, the error is recorded
and every op runs its plain-PyTorch reference.  :func:`extension_status` says which path each op
takes on each device.  The shape rules for torch.compile (``register_fake``) live here too, so
they exist exactly when the ops do.
"""

from __future__ import annotations

import functools
import os

import torch

OPS = ("kv_cache_update", "partial_attention", "certainty_density_topk")
OPS += ("argmax_confidence",)

#: The fused per-layer element-wise ops (RMSNorm, residual add + RMSNorm, SwiGLU product, q RoPE).
FUSED_OPS = ("rms_norm", "add_rms_norm", "silu_mul", "rope")
OPS = OPS + FUSED_OPS

# Limits of the CUDA kernels (csrc/cuda/*.cu); the wrappers use the references beyond them.
CUDA_ATTENTION_DTYPES = (torch.bfloat16, torch.float16)
CUDA_ATTENTION_HEAD_DIMS = (64, 128)
CUDA_DENSITY_MAX_COLUMNS = 16384
CUDA_DENSITY_MAX_RADIUS = 2048

_loaded = False
_error: str | None = None


def _register_fakes() -> None:
    @torch.library.register_fake("dllm_core::kv_cache_update")
    def _kv_cache_update_fake(k_cache, v_cache, k, v, rows, positions, theta):
        return None

    @torch.library.register_fake("dllm_core::partial_attention")
    def _partial_attention_fake(q, k_cache, v_cache, key_mask, scale, return_probs):
        B, n = q.shape[0], q.shape[1]
        probs_shape = (B, n, k_cache.shape[1]) if return_probs else (0,)
        return q.new_empty(q.shape), q.new_empty(probs_shape, dtype=torch.float32)

    @torch.library.register_fake("dllm_core::certainty_density_topk")
    def _certainty_density_topk_fake(known, confidence, candidates, sigma, k):
        B, G = known.shape
        return (known.new_empty((B, G), dtype=torch.float32),
                known.new_empty((B, torch.sym_min(k, G)), dtype=torch.int64))

    @torch.library.register_fake("dllm_core::argmax_confidence")
    def _argmax_confidence_fake(logits, exclude):
        lead = logits.shape[:-1]
        return logits.new_empty(lead, dtype=torch.int64), logits.new_empty(lead, dtype=torch.float32)


def _register_fused_fakes() -> None:
    @torch.library.register_fake("dllm_core::rms_norm")
    def _rms_norm_fake(x, weight, eps):
        return x.new_empty(x.shape)

    @torch.library.register_fake("dllm_core::add_rms_norm")
    def _add_rms_norm_fake(x, delta, weight, eps):
        return x.new_empty(x.shape), x.new_empty(x.shape)

    @torch.library.register_fake("dllm_core::silu_mul")
    def _silu_mul_fake(gate_up):
        return gate_up.new_empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2))

    @torch.library.register_fake("dllm_core::rope")
    def _rope_fake(x, positions, theta):
        return x.new_empty(x.shape)


def _load() -> None:
    global _loaded, _error
    if os.environ.get("DLLM_CORE_DISABLE_EXTENSION", "") == "1":
        _error = "disabled by DLLM_CORE_DISABLE_EXTENSION=1"
        return
    try:
        from dllm_core import _C  # noqa: F401  (loading the library runs its op registrations)
    except Exception as exc:  # ImportError when not built; OSError/undefined symbols when built for another torch
        _error = f"{type(exc).__name__}: {exc}"
        return
    _register_fakes()
    _register_fused_fakes()
    _loaded = True


_load()


def loaded() -> bool:
    """Whether ``dllm_core._C`` is loaded (and not disabled)."""
    return _loaded


@functools.lru_cache(maxsize=None)
def has_kernel(op: str, device_type: str) -> bool:
    """Whether the loaded extension registered a kernel of ``op`` for ``device_type`` ("cpu", "cuda")."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if not _loaded or key is None:
        return False
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"dllm_core::{op}", key))
    except (AttributeError, RuntimeError):  # private API gone: claim only what every build has
        return key == "CPU"


def extension_status() -> dict:
    """``{"loaded", "error", "ops": {op: {"cpu": ..., "cuda": ...}}}``.

    Per device: "compiled" (the extension's kernel runs), "reference" (the plain-PyTorch
    definition runs) or, for "cuda" on a machine without a usable GPU, "unavailable".
    """
    cuda_ok = torch.cuda.is_available()
    ops = {op: {"cpu": "compiled" if has_kernel(op, "cpu") else "reference",
                "cuda": "compiled" if has_kernel(op, "cuda") else ("reference" if cuda_ok else "unavailable")}
           for op in OPS}
    return {"loaded": _loaded, "error": _error, "ops": ops}
