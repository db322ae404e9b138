"""The compiled fast paths and their plain-PyTorch references.

Each public function dispatches to the compiled extension (``dllm_core._C``) when it is built
and implements the op for the tensors' device, and otherwise to its reference.  Models, cache
policies and schedulers call only these functions.
"""

from __future__ import annotations

from torch import Tensor

from .certainty_density import certainty_density_reference, certainty_density_topk_reference
from .kv_cache_update import kv_cache_update_reference
from .partial_attention import partial_attention_reference
from .rope import apply_rope, rope_cos_sin

__all__ = [
    "apply_rope", "rope_cos_sin", "kv_cache_update", "partial_attention", "certainty_density_topk",
    "certainty_density_reference",
]


def kv_cache_update(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor, rows: Tensor, positions: Tensor,
                    theta: float) -> None:
    """Write RoPE(k) and v at ``rows`` of the caches in place (see :func:`kv_cache_update_reference`)."""
    kv_cache_update_reference(k_cache, v_cache, k, v, rows, positions, theta)


def partial_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, key_mask: Tensor, scale: float,
                      return_probs: bool = False) -> tuple[Tensor, Tensor]:
    """Attention of the given query rows over the whole cache (see :func:`partial_attention_reference`)."""
    return partial_attention_reference(q, k_cache, v_cache, key_mask, scale, return_probs)


def certainty_density_topk(known: Tensor, confidence: Tensor, candidates: Tensor, sigma: float,
                           k: int) -> tuple[Tensor, Tensor]:
    """Certainty-prior scores and the top-k columns (see :func:`certainty_density_topk_reference`)."""
    return certainty_density_topk_reference(known, confidence, candidates, sigma, k)
