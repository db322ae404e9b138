"""Attention of q selected rows over all T cached positions (no causal mask), GQA, optional
head-averaged probabilities for d2Cache's attention rollout."""

from __future__ import annotations

import torch
from torch import Tensor


def partial_attention_reference(q: Tensor, k_cache: Tensor, v_cache: Tensor, key_mask: Tensor, scale: float,
                                return_probs: bool) -> tuple[Tensor, Tensor]:
    """Plain-PyTorch definition.

    q: (B, q, H, D) post-RoPE queries.  k_cache, v_cache: (B, T, Hkv, D) with H % Hkv == 0.
    key_mask: (B, T) bool, True where a key may be attended.  Returns ``out`` (B, q, H, D) in q's
    dtype and ``probs`` (B, q, T) float32, the attention probabilities averaged over heads
    (an empty tensor when ``return_probs`` is False).  Softmax runs in float32.
    """
    B, n, H, D = q.shape
    group = H // k_cache.shape[2]
    k = k_cache.to(torch.float32).repeat_interleave(group, dim=2)
    v = v_cache.to(torch.float32).repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhd,bthd->bhqt", q.to(torch.float32), k) * scale
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bhqt,bthd->bqhd", probs, v).to(q.dtype)
    mean = probs.mean(dim=1) if return_probs else q.new_empty(0, dtype=torch.float32)
    return out, mean
