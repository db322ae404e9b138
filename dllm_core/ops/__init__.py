"""The compiled fast paths and their plain-PyTorch references.

Each public function dispatches to the compiled extension (``dllm_core._C``) when it is built
and implements the op for the tensors' device, and otherwise to its reference.  Models, cache
policies and schedulers call only these functions.  ``extension_status()`` reports the path
each op takes; ``DLLM_CORE_DISABLE_EXTENSION=1`` forces the references.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import extension as _ext
from .argmax_confidence import argmax_confidence_reference
from .certainty_density import certainty_density_reference, certainty_density_topk_reference, density_radius
from .extension import extension_status
from .kv_cache_update import kv_cache_update_reference
from .partial_attention import partial_attention_reference
from .rope import apply_rope, rope_cos_sin
from .rms_norm import add_rms_norm_reference, rms_norm_reference
from .silu_mul import silu_mul_reference

__all__ = [
    "apply_rope", "rope_cos_sin", "kv_cache_update", "partial_attention", "certainty_density_topk",
    "certainty_density_reference", "extension_status",
    "rms_norm", "add_rms_norm", "silu_mul", "rope",
]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _compiled(op: str, t: Tensor) -> bool:
    return _ext.loaded() and _ext.has_kernel(op, t.device.type)


def kv_cache_update(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor, rows: Tensor, positions: Tensor,
                    theta: float) -> None:
    """Write RoPE(k) and v at ``rows`` of the caches in place (see :func:`kv_cache_update_reference`)."""
    if (_compiled("kv_cache_update", k_cache) and k_cache.dtype in _FLOATS
            and k.dtype == v.dtype == k_cache.dtype == v_cache.dtype
            and rows.dtype == positions.dtype == torch.int64
            and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1):
        torch.ops.dllm_core.kv_cache_update(k_cache, v_cache, k, v, rows, positions, float(theta))
    else:
        kv_cache_update_reference(k_cache, v_cache, k, v, rows, positions, theta)


def partial_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, key_mask: Tensor, scale: float,
                      return_probs: bool = False) -> tuple[Tensor, Tensor]:
    """Attention of the given query rows over the whole cache (see :func:`partial_attention_reference`)."""
    # The kernels have no backward: where a gradient is needed (training through full_logits)
    # the differentiable reference runs.
    ok = (_compiled("partial_attention", q) and q.dtype in _FLOATS and q.dtype == k_cache.dtype == v_cache.dtype
          and key_mask.dtype == torch.bool and not _needs_grad(q, k_cache, v_cache))
    if ok and q.device.type == "cuda":
        ok = q.dtype in _ext.CUDA_ATTENTION_DTYPES and q.shape[-1] in _ext.CUDA_ATTENTION_HEAD_DIMS
    if ok:
        return torch.ops.dllm_core.partial_attention(q, k_cache, v_cache, key_mask, float(scale), bool(return_probs))
    return partial_attention_reference(q, k_cache, v_cache, key_mask, scale, return_probs)


def certainty_density_topk(known: Tensor, confidence: Tensor, candidates: Tensor, sigma: float,
                           k: int) -> tuple[Tensor, Tensor]:
    """Certainty-prior scores and the top-k columns (see :func:`certainty_density_topk_reference`)."""
    ok = (_compiled("certainty_density_topk", known) and known.dtype == candidates.dtype == torch.bool
          and confidence.is_floating_point() and sigma > 0 and k >= 0)
    if ok and known.device.type == "cuda":
        ok = known.shape[-1] <= _ext.CUDA_DENSITY_MAX_COLUMNS and density_radius(sigma) <= _ext.CUDA_DENSITY_MAX_RADIUS
    if ok:
        return torch.ops.dllm_core.certainty_density_topk(known, confidence, candidates, float(sigma), int(k))
    return certainty_density_topk_reference(known, confidence, candidates, sigma, k)


# ---- argmax_confidence ----------------------------------------------------------------------
__all__ += ["argmax_confidence", "argmax_confidence_reference"]


def argmax_confidence(logits: Tensor, exclude: int = -1) -> tuple[Tensor, Tensor]:
    """Argmax token of each (..., V) row and its softmax probability, read in the logits' own dtype
    (see :func:`argmax_confidence_reference`): ``(token int64, prob float32)``, shape ``logits.shape[:-1]``."""
    if (_compiled("argmax_confidence", logits) and logits.dtype in _FLOATS and logits.dim() >= 1
            and 0 < logits.shape[-1] < 2 ** 31 and exclude < logits.shape[-1]):
        return torch.ops.dllm_core.argmax_confidence(logits, int(exclude))
    return argmax_confidence_reference(logits, exclude)

# ---- fused per-layer element-wise ops ----------------------------------------------------------
# No autograd formulas: where a gradient is needed (training through full_logits) the references run.

def _needs_grad(*ts: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _norm_ok(op: str, x: Tensor, weight: Tensor) -> bool:
    return (_compiled(op, x) and x.dtype in _FLOATS and weight.dtype == x.dtype and weight.dim() == 1
            and x.dim() >= 1 and weight.shape[0] == x.shape[-1] and weight.device == x.device
            and not _needs_grad(x, weight))


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim (see :func:`rms_norm_reference`)."""
    if _norm_ok("rms_norm", x, weight):
        return torch.ops.dllm_core.rms_norm(x, weight, float(eps))
    return rms_norm_reference(x, weight, eps)


def add_rms_norm(x: Tensor, delta: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(x + delta, RMSNorm(x + delta))`` (see :func:`add_rms_norm_reference`)."""
    if (_norm_ok("add_rms_norm", x, weight) and delta.dtype == x.dtype and delta.shape == x.shape
            and delta.device == x.device and not _needs_grad(delta)):
        return torch.ops.dllm_core.add_rms_norm(x, delta, weight, float(eps))
    return add_rms_norm_reference(x, delta, weight, eps)


def silu_mul(gate_up: Tensor) -> Tensor:
    """``silu(gate) * up`` of ``gate_up = [gate | up]`` (see :func:`silu_mul_reference`)."""
    if (_compiled("silu_mul", gate_up) and gate_up.dtype in _FLOATS and gate_up.dim() >= 1
            and gate_up.shape[-1] % 2 == 0 and not _needs_grad(gate_up)):
        return torch.ops.dllm_core.silu_mul(gate_up)
    return silu_mul_reference(gate_up)


def rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """RoPE of ``x`` (B, n, H, D), any strides, by ``positions`` (B, n): a new contiguous tensor
    (see :func:`apply_rope`; the compiled kernels rotate exactly as :func:`kv_cache_update` rotates keys)."""
    if (_compiled("rope", x) and x.dtype in _FLOATS and x.dim() == 4 and x.shape[-1] % 2 == 0
            and positions.dtype == torch.int64 and positions.shape == x.shape[:2]
            and positions.device == x.device and not _needs_grad(x)):
        return torch.ops.dllm_core.rope(x, positions, float(theta))
    return apply_rope(x, positions, theta)
