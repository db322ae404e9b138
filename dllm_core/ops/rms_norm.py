"""RMS normalisation and the residual add fused in front of it (the pre-norm layer's seams).

The roundings are those of the models' original ``RMSNorm``: statistics in float32, the normalised
value cast back to the input dtype, then multiplied by the weight in that dtype.  The compiled
kernels reproduce every element-wise rounding; only the float32 sum of squares may be summed in
another order, so outputs can differ from the reference in the last bit now and then.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``weight * (x * rsqrt(mean(x^2) + eps))`` over the last dim; see the module docstring."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm_reference(x: Tensor, delta: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(s, rms_norm(s))`` with ``s = x + delta`` rounded to the dtype (the residual stream goes on as ``s``)."""
    s = x + delta
    return s, rms_norm_reference(s, weight, eps)
