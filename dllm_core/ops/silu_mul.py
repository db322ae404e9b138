"""The SwiGLU product of a fused ``[gate | up]`` projection output."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def silu_mul_reference(gate_up: Tensor) -> Tensor:
    """``silu(gate) * up`` for ``gate_up (..., 2I) = [gate | up]``; each op rounds to the dtype (eager PyTorch)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
