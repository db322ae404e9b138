"""Row-set helpers of d2Cache: the rollout nucleus, gap inflation and the batch top-up order.

All work on (B, T) tensors with batched sorts, never with per-row Python loops or host syncs.
"""

from __future__ import annotations

import torch
from torch import Tensor


#: Tier given to already selected columns by :func:`rows_from_mask` (above any caller tier).
_SELECTED_TIER = 1 << 30


def nucleus_select(scores: Tensor, p: float, allowed: Tensor, min_k: int = 1) -> Tensor:
    """(B, T) bool: per row the largest-score prefix of ``allowed`` columns holding mass <= ``p``.

    ``scores`` (B, T) are non-negative; they are normalised over the allowed columns of each row,
    sorted in descending order (ties: lower column first) and kept while the cumulative mass is
    ``<= p``, so the column that would cross ``p`` is *not* kept.  This is the reference code's
    rule (``nucleus_select``); the paper's text says the set's mass "exceeds" p, which would keep
    that crossing column too.  At least ``min_k`` allowed columns are kept (fewer when fewer are
    allowed).  ``p >= 1`` keeps every allowed column (a float cumulative sum may overshoot 1.0
    by rounding, which would otherwise drop the smallest one).
    """
    if p >= 1.0:
        return allowed.clone()
    mass = torch.where(allowed, scores.to(torch.float32), torch.zeros((), dtype=torch.float32, device=scores.device))
    mass = mass / mass.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    sorted_mass, order = torch.sort(mass, dim=-1, descending=True, stable=True)
    keep = sorted_mass.cumsum(-1) <= p
    keep[:, :min_k] = True
    keep &= allowed.gather(1, order)
    return torch.zeros_like(allowed).scatter_(1, order, keep)


def inflate_gaps(selected: Tensor, width: int) -> Tensor:
    """Also select every column lying between two selected columns at most ``width`` apart.

    d2Cache's ``inflate_w`` (used with semi-AR plus parallel decoding): short unselected runs
    between selected columns are filled.  ``width <= 0`` returns ``selected`` unchanged.
    """
    if width <= 0:
        return selected
    B, T = selected.shape
    cols = torch.arange(T, device=selected.device).expand(B, T)
    prev = torch.where(selected, cols, torch.full_like(cols, -1)).cummax(-1).values
    nxt = torch.where(selected, cols, torch.full_like(cols, T)).flip(-1).cummin(-1).values.flip(-1)
    return selected | ((prev >= 0) & (nxt < T) & (nxt - prev <= width))


def lexicographic_order(tier: Tensor, score: Tensor) -> Tensor:
    """(B, T) column order by ``tier`` descending, then ``score`` descending, then column ascending.

    Two stable sorts give an exact lexicographic order (adding a tier offset to the score would
    round near-equal scores together).
    """
    by_score = torch.sort(score, dim=-1, descending=True, stable=True).indices
    by_tier = torch.sort(tier.gather(1, by_score), dim=-1, descending=True, stable=True).indices
    return by_score.gather(1, by_tier)


def rows_from_mask(selected: Tensor, tier: Tensor, score: Tensor, q: int) -> Tensor:
    """(B, q) ascending columns: each row's selected columns, topped up to ``q`` by priority.

    Selected columns come first; a row with fewer than ``q`` takes further columns by ``tier``
    ((B, T) long, below 2**30) then ``score`` (d2Cache's ``top_up_mask``: batched rows must have
    one count).  The result is sorted so that the forward's gathers and scatters run in order.
    """
    chosen = lexicographic_order(tier.masked_fill(selected, _SELECTED_TIER), score)[:, :q]
    return torch.sort(chosen, dim=-1).values


def rows_from_mask_padded(selected: Tensor, tier: Tensor, score: Tensor, count: Tensor, width: int) -> Tensor:
    """(B, width): ``rows_from_mask(selected, tier, score, q)`` followed by copies of its last column.

    ``q`` is the 0-d long tensor ``count`` (1 <= q <= width <= T), so one CUDA graph per padded
    ``width`` serves every row count below it; the padding is the duplicate-row padding of
    :mod:`dllm_core.cuda_graphs` (``[:, :q]`` is the plan's rows).
    """
    B, T = selected.shape
    chosen = lexicographic_order(tier.masked_fill(selected, _SELECTED_TIER), score)[:, :width]
    slots = torch.arange(width, device=selected.device)
    chosen = torch.where(slots < count, chosen, T)  # slots past q sort after every real column
    chosen = torch.sort(chosen, dim=-1).values
    return chosen.gather(1, torch.minimum(slots, count - 1).expand(B, width))
