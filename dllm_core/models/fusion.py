"""Fused projection weights: one ``[q; k; v]`` and one ``[gate; up]`` matrix per layer.

A decoding step multiplies few rows, so each GEMM is a weight read plus a launch; fusing the three
attention projections and the two MLP input projections saves launches and lets cuBLAS read one
larger matrix.  The fused matrix does not double memory: it is allocated once (``torch.cat``) and
every module's weight (and bias) is re-pointed (``param.data = view``) at its rows, so the modules,
their ``state_dict`` names, ``load_state_dict`` (which copies into the views), optimisers and
autograd through the modules all keep working.  Anything that *replaces* a parameter breaks the
sharing: ``.to()`` and friends go through ``TransformerLM._apply``, which fuses again; a new
Parameter object (``load_state_dict(assign=True)``, plain assignment) is noticed by
:meth:`FusedLinear.valid`, an identity check cheap enough for every forward, and the model fuses
again on its next forward.  Only ``param.data = other`` by hand goes unnoticed: call
``fuse_projections()`` after doing that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn


def _entries(mods: Sequence[nn.Linear]) -> tuple[tuple[dict, str, nn.Parameter], ...]:
    # (the module's parameter dict, name, the Parameter object now there): identity checks only,
    # since nn.Module.__getattr__ and data_ptr() would cost ~1 us each, 200+ times per forward.
    return tuple((m._parameters, name, m._parameters[name]) for m in mods for name in ("weight", "bias")
                 if m._parameters.get(name) is not None)


@dataclass
class FusedLinear:
    """``F.linear(x, weight, bias)`` equals ``torch.cat([m(x) for m in mods], -1)``."""

    weight: Tensor           #: (sum of out_features, in_features); each module's weight is a view of it
    bias: Tensor | None      #: (sum of out_features,) when the modules have biases, views likewise
    mods: tuple[nn.Linear, ...]
    entries: tuple[tuple[dict, str, nn.Parameter], ...]  #: see _entries

    def valid(self) -> bool:
        """True while every module still holds the Parameter objects that were made views."""
        return all(params.get(name) is p for params, name, p in self.entries)


def can_fuse(mods: Sequence[nn.Module]) -> bool:
    """Linear layers over the same input, one dtype and device, all biased or none."""
    if not mods or not all(type(m) is nn.Linear for m in mods):
        return False
    first = mods[0]
    return all(m.in_features == first.in_features and m.weight.dtype == first.weight.dtype
               and m.weight.device == first.weight.device and (m.bias is None) == (first.bias is None)
               and (m.bias is None or m.bias.dtype == first.weight.dtype) for m in mods)


def _share(params: list[nn.Parameter]) -> Tensor:
    """Concatenate ``params`` along dim 0 into a new tensor and point each at its rows of it."""
    fused = torch.cat([p.detach() for p in params], dim=0)
    start = 0
    for p in params:
        p.data = fused[start:start + p.shape[0]]
        start += p.shape[0]
    return fused


def fuse_linears(mods: Sequence[nn.Linear]) -> FusedLinear:
    """Fuse ``mods`` (see :func:`can_fuse`) as described in the module docstring."""
    if not can_fuse(mods):
        raise ValueError("fuse_linears needs nn.Linear layers with one input size, dtype, device and bias setting")
    with torch.inference_mode(False), torch.no_grad():  # plain tensors even when called under inference mode
        weight = _share([m.weight for m in mods])
        bias = _share([m.bias for m in mods]) if mods[0].bias is not None else None
    return FusedLinear(weight, bias, tuple(mods), _entries(mods))
