"""Rotary position embedding, GPT-NeoX ("rotate half") layout, as LLaDA and Dream use it.

Angles are computed in float32 whatever the tensor dtype (LLaDA's ``rope_full_precision``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of shape ``positions.shape + (head_dim // 2,)`` in float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotate ``x`` (B, n, heads, D) by ``positions`` (B, n); returns a new tensor of x's dtype."""
    cos, sin = rope_cos_sin(positions, x.shape[-1], theta)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    xf = x.to(torch.float32)
    x1, x2 = xf.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
