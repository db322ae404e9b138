"""The most likely token of each logits row and its softmax probability (greedy confidence).

Definition, over the last dim of ``(..., V)`` logits, with vocabulary id ``exclude`` read as -inf
(the mask id; ``exclude < 0``: none) and everything in float32:

    token = argmax_j l_j            (ties -> the lowest index, NaN counts as the maximum: torch.argmax)
    prob  = 1 / sum_j exp(l_j - l_token)

which is softmax(l)[token] without the (..., V) probabilities.  Degenerate rows follow the formula:
a row whose maximum is -inf (every logit -inf or excluded) or +inf, or that holds a NaN, gets NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_argmax_confidence_args(logits: Tensor, exclude: int) -> None:
    """Raise ValueError for inputs outside the op's contract."""
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"argmax_confidence: logits must be (..., V) with V >= 1, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"argmax_confidence: logits must be floating point, got {logits.dtype}")
    if exclude >= logits.shape[-1]:
        raise ValueError(f"argmax_confidence: exclude={exclude} is not a vocabulary id (V={logits.shape[-1]}); "
                         "pass -1 for none")


def argmax_confidence_reference(logits: Tensor, exclude: int = -1) -> tuple[Tensor, Tensor]:
    """Plain-PyTorch definition: ``(token int64, prob float32)``, both of shape ``logits.shape[:-1]``."""
    check_argmax_confidence_args(logits, exclude)
    lf = logits.to(torch.float32, copy=exclude >= 0)  # a private copy only when we write into it
    if exclude >= 0:
        lf[..., exclude] = float("-inf")
    token = lf.argmax(-1)
    top = lf.amax(-1, keepdim=True)  # NaN when the row holds one, as argmax's pick
    prob = torch.exp(lf - top).sum(-1).reciprocal()
    return token, prob
