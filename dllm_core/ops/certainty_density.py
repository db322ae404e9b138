"""d2Cache certainty density times confidence, and the top-k masked columns by that score.

Definition (d2Cache Eq. 3 with the upstream code's normalisation and boundary rule): over a
generated region of G columns,

    D(i) = sum_{d=-R..R} w(d) * known_ext(i + d) / sum_{d=-R..R} w(d),   w(d) = exp(-d^2 / (2 sigma^2))

with R = ceil(5 sigma), ``known_ext(j) = 1`` for j < 0 (the prompt is known), ``known(j)`` inside the
region, and ``known(G - 1)`` for j >= G (the right side counts as known only once the last column is).
D is in [0, 1].  The score of a candidate column is ``D(i) * confidence(i)``; other columns score -inf.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def density_radius(sigma: float) -> int:
    """Half-width of the truncated Gaussian stencil."""
    return max(1, math.ceil(5.0 * sigma))


def certainty_density_reference(known: Tensor, sigma: float) -> Tensor:
    """D (B, G) float32 for ``known`` (B, G) bool."""
    B, G = known.shape
    R = density_radius(sigma)
    d = torch.arange(-R, R + 1, device=known.device, dtype=torch.float32)
    w = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    left = torch.ones(B, R, device=known.device, dtype=torch.float32)
    right = known[:, -1:].to(torch.float32).expand(B, R)
    ext = torch.cat([left, known.to(torch.float32), right], dim=1)
    dens = F.conv1d(ext.unsqueeze(1), w.view(1, 1, -1)).squeeze(1)
    return dens / w.sum()


def certainty_density_topk_reference(known: Tensor, confidence: Tensor, candidates: Tensor, sigma: float,
                                     k: int) -> tuple[Tensor, Tensor]:
    """Plain-PyTorch definition.

    known, candidates: (B, G) bool; confidence: (B, G) float.  Returns ``scores`` (B, G) float32
    (D * confidence on candidates, -inf elsewhere) and ``top`` (B, min(k, G)) long, the columns of
    the highest scores in descending order, ties broken by the lower column.  Rows with fewer
    than k candidates are completed with non-candidate columns (score -inf), lowest first.
    """
    dens = certainty_density_reference(known, sigma)
    scores = torch.where(candidates, dens * confidence.to(torch.float32), torch.full_like(dens, float("-inf")))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return scores, order[:, : min(k, known.shape[1])]
