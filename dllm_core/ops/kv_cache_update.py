"""Indexed K/V cache update with RoPE applied to K on the way in (the cache holds post-RoPE keys)."""

from __future__ import annotations

from torch import Tensor

from .rope import apply_rope


def kv_cache_update_reference(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor, rows: Tensor,
                              positions: Tensor, theta: float) -> None:
    """Plain-PyTorch definition.

    k_cache, v_cache: (B, T, Hkv, D), updated in place.  k, v: (B, q, Hkv, D) new pre-RoPE keys and
    values.  rows: (B, q) long columns to write.  positions: (B, q) long RoPE positions of those rows.
    """
    k_rot = apply_rope(k, positions, theta).to(k_cache.dtype)
    idx = rows[:, :, None, None].expand(-1, -1, k.shape[2], k.shape[3])
    k_cache.scatter_(1, idx, k_rot)
    v_cache.scatter_(1, idx, v.to(v_cache.dtype))
