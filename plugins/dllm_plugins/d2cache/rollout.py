"""Attention rollout of one partial forward, as an exact backward vector chain.

d2Cache (arXiv 2509.23094, Eqs. 5-9) scores every column by how much the sequence "flows
through" it: at layer l the head-averaged attention rows A_l of the recomputed rows are embedded
in a T x T matrix E_l whose other rows are one-hot (a column that was not recomputed only
"attends" to itself), W_l = rownorm(E_l + I), C_N = W_N ... W_1, and the influence of column j
is the column sum c_j = sum_i C_N[i, j].

The reference code multiplies the T x T matrices, about 2 T^3 flops per layer.  Only the column
sums are needed, so ``c = 1^T W_N ... W_1`` can be evaluated from the left as a vector chain.
A row i outside the recomputed set is the identity row e_i of W_l, and a recomputed row is
``(A_l[i] + e_i) / (1 + sum A_l[i])``, hence per layer

    v' = v with the recomputed entries zeroed  +  sum_{i in rows} v_i W_l[i, :]

which costs O(q T) per layer and reads only the (B, q, T) rows the model returned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def rollout_influence(attention: Sequence[Tensor], rows: Tensor, start: Tensor) -> Tensor:
    """Column influences ``c = start^T W_N ... W_1`` (B, T) of one forward.

    :param attention: per layer (first to last) the (B, q, T) head-averaged attention
        probabilities of the recomputed rows.
    :param rows: (B, q) long, the columns those rows belong to (no duplicates).
    :param start: (B, T) float weights of the rows of C_N to sum; all ones gives d2Cache's
        column sums.  The result has ``start``'s dtype.
    """
    v = start.clone()
    for attn in reversed(attention):
        a = attn.to(v.dtype)
        # v_S scaled by the row normaliser 1 / (1 + sum_j A[i, j]) of each recomputed row
        w = v.gather(1, rows) / (1.0 + a.sum(-1))
        v.scatter_(1, rows, 0.0)
        v = v + torch.bmm(w.unsqueeze(1), a).squeeze(1)  # the A part of the recomputed rows
        v.scatter_add_(1, rows, w)                         # their identity (residual) part
    return v


def rollout_influence_dense(attention: Sequence[Tensor], rows: Tensor, start: Tensor) -> Tensor:
    """The same quantity by the reference's dense T x T matrix chain (test oracle; O(N T^3))."""
    B, T = start.shape
    eye = torch.eye(T, dtype=start.dtype, device=start.device).expand(B, T, T)
    chain = eye.clone()
    batch = torch.arange(B, device=start.device).unsqueeze(1).expand_as(rows)
    for attn in attention:
        embedded = eye.clone()
        embedded[batch, rows] = attn.to(start.dtype)
        w = embedded + eye
        w = w / w.sum(-1, keepdim=True)
        chain = w @ chain
    return torch.einsum("bi,bij->bj", start, chain)
