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

Restricted to the recomputed columns S the chain closes on itself: the entries of v at S after
layer l are ``u = w_l (A_l[:, S] + I)`` with ``w_l = u_prev / n_l`` (n_l the row normalisers),
and a column outside S only accumulates ``sum_l (w_l A_l)[j]`` on top of its start weight.
:func:`rollout_influence_padded` therefore runs the layer loop on q x q blocks (one small
batched product per layer) and applies all layers' (q, T) rows in one product at the end:
about 40 kernels for 32 layers instead of 9 per layer, on fixed (bucketed) shapes so that the
whole rollout can be replayed from one CUDA graph.
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


def rollout_influence_padded(attention: Tensor, rows: Tensor, start: Tensor) -> Tensor:
    """:func:`rollout_influence` on stacked, padded inputs (one q bucket, fixed shapes).

    :param attention: (B, L, Q, T) the per-layer attention rows (first to last layer), stacked;
        rows of padding slots must be finite (zeros, say): they are ignored.
    :param rows: (B, Q) long, the recomputed columns: distinct real columns first, then padding
        slots repeating the last real column (:func:`dllm_core.cuda_graphs.pad_columns`).  A slot
        is padding exactly when it repeats the slot before it.
    :param start: (B, T) weights of the rows of C_N to sum, float or bool (d2Cache: the valid
        columns).  The result has ``start``'s dtype, float32 for bool.
    """
    B, L, Q, T = attention.shape
    start = start if start.is_floating_point() else start.to(torch.float32)
    a = attention.to(start.dtype)
    real = torch.ones(B, Q, dtype=torch.bool, device=rows.device)
    real[:, 1:] = rows[:, 1:] != rows[:, :-1]
    realf = real.to(torch.float32)
    norm = torch.where(real.unsqueeze(1), 1.0 + a.sum(-1), 1.0)              # (B, L, Q) row normalisers
    # m[l][i, j] = (A_l[i, S_j] + [i == j]) / n_{l-1}[j]: one step w_l -> w_{l-1} of the chain on S;
    # padding columns are zeroed so their w stays 0 (they duplicate a real column).
    a_s = a.gather(-1, rows[:, None, None, :].expand(B, L, Q, Q)) * realf[:, None, None, :]
    a_s = a_s + torch.diag_embed(realf).unsqueeze(1)
    next_norm = torch.cat([torch.ones_like(norm[:, :1]), norm[:, :-1]], dim=1)  # layer 0: no next
    m = a_s / next_norm.unsqueeze(2)
    w = (start.gather(1, rows) * realf / norm[:, L - 1]).unsqueeze(1)       # (B, 1, Q) of the last layer
    ws = [w]
    for layer in range(L - 1, 0, -1):
        w = torch.bmm(w, m[:, layer])
        ws.append(w)
    at_rows = torch.bmm(w, m[:, 0]).squeeze(1)                               # v on S after layer 0
    w_all = torch.cat(ws[::-1], dim=2)                                       # (B, 1, L * Q), layer-major
    spread = torch.bmm(w_all, a.reshape(B, L * Q, T)).squeeze(1)             # sum_l w_l A_l
    in_rows = torch.zeros(B, T, dtype=torch.bool, device=rows.device).scatter_(1, rows, True)
    v = torch.where(in_rows, 0.0, start + spread)
    return v.scatter_add_(1, rows, at_rows * realf)
