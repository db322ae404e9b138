"""Pieces shared by the Llama-style families (LLaDA, Dream): RMSNorm, SwiGLU and the partial-forward driver.

A family file defines its modules under the upstream tensor names and describes each layer to the
driver with a :class:`LayerParts`; :class:`TransformerLM` then implements both the cached partial
forward (:meth:`TransformerLM.forward`) and an independent cache-free full forward
(:meth:`TransformerLM.full_logits`) from those parts, so the two can be checked against each other.
RoPE on keys, cache writes and attention go through :mod:`dllm_core.ops` only, so the compiled
fast paths replace them without touching the models.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..state import ForwardOutput, ForwardPlan
from .base import DiffusionLM, KVCache

#: ``attend(q_rot, k, v) -> (out, probs)``: attention of the layer's rows given their post-RoPE
#: queries and pre-RoPE keys/values; the partial and the full forward differ only in this.
AttendFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


class RMSNorm(nn.Module):
    """RMS normalisation computed in float32, cast back, then scaled (LLaDA/OLMo and Qwen2 agree)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def swiglu(x: Tensor, gate: nn.Module, up: nn.Module, down: nn.Module) -> Tensor:
    """``down(silu(gate(x)) * up(x))``."""
    return down(F.silu(gate(x)) * up(x))


class SwiGLU(nn.Module):
    """SwiGLU MLP with the Llama/Qwen2 parameter names (``gate_proj``, ``up_proj``, ``down_proj``)."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return swiglu(x, self.gate_proj, self.up_proj, self.down_proj)


@dataclass(frozen=True)
class LayerParts:
    """One pre-norm decoder layer as the driver sees it (references to the family's modules)."""

    attn_norm: nn.Module
    q_proj: nn.Module
    k_proj: nn.Module
    v_proj: nn.Module
    o_proj: nn.Module
    mlp_norm: nn.Module
    mlp: Callable[[Tensor], Tensor]


class TransformerLM(DiffusionLM):
    """A pre-norm RoPE transformer with bidirectional attention; subclasses supply the parts."""

    #: Checkpoint tensors the loader may drop silently (e.g. a head stored although tied).
    ignored_checkpoint_keys: tuple[str, ...] = ()

    # -- what a family provides ----------------------------------------------------------------

    @abstractmethod
    def layer_parts(self) -> list[LayerParts]:
        """The layers, in order."""

    @abstractmethod
    def embed_tokens(self, ids: Tensor) -> Tensor:
        """(B, n) ids -> (B, n, d) input hidden states in the model's dtype."""

    @abstractmethod
    def final_norm(self, h: Tensor) -> Tensor:
        """The norm before the LM head."""

    @abstractmethod
    def head_weight(self) -> Tensor:
        """(V, d) LM head weight (the embedding table when tied)."""

    def scale_logits(self, logits: Tensor) -> Tensor:
        """Hook for families that scale logits (identity by default)."""
        return logits

    # -- shared machinery ----------------------------------------------------------------------

    def _parts(self) -> list[LayerParts]:
        # Built once: parts hold module references, which stay valid across .to() and
        # load_state_dict(assign=True) because those replace parameters inside the modules.
        parts = self.__dict__.get("_layer_parts_cache")
        if parts is None:
            parts = self.layer_parts()
            self.__dict__["_layer_parts_cache"] = parts
        return parts

    def _layer(self, parts: LayerParts, h: Tensor, pos: Tensor, attend: AttendFn) -> tuple[Tensor, Tensor]:
        s = self.spec
        B, n, _ = h.shape
        x = parts.attn_norm(h)
        q = parts.q_proj(x).view(B, n, s.num_heads, s.head_dim)
        k = parts.k_proj(x).view(B, n, s.num_kv_heads, s.head_dim)
        v = parts.v_proj(x).view(B, n, s.num_kv_heads, s.head_dim)
        q = ops.apply_rope(q, pos, s.rope_theta)
        out, probs = attend(q, k, v)
        h = h + parts.o_proj(out.reshape(B, n, s.num_heads * s.head_dim))
        h = h + parts.mlp(parts.mlp_norm(h))
        return h, probs

    def _logits(self, h: Tensor) -> Tensor:
        # In the model's dtype: a float32 copy of (rows, V) would be the largest temporary of a step
        # (259 MB for LLaDA at 16 x 32 rows); consumers upcast where they need it (dllm_core.sampling).
        logits = F.linear(self.final_norm(h), self.head_weight())
        return self.scale_logits(logits)

    def hidden_columns(self, logit_positions: Tensor) -> Tensor:
        """Columns whose hidden rows predict ``logit_positions``: the same columns, or for shifted
        models the previous ones (column 0 predicts itself, as upstream's shift does)."""
        if self.spec.shifted_logits:
            return (logit_positions - 1).clamp(min=0)
        return logit_positions

    def forward(self, input_ids: Tensor, positions: Tensor, valid: Tensor, cache: KVCache,
                plan: ForwardPlan, logit_positions: Tensor) -> ForwardOutput:
        """Partial forward (see :meth:`DiffusionLM.forward`); no host synchronisation except the
        plan check on CPU tensors, where it is free."""
        B, T = input_ids.shape
        if cache.length != T:
            raise ValueError(f"KV cache holds {cache.length} columns but the sequence has {T}")
        cols = torch.arange(T, device=input_ids.device)
        refresh = plan.rows is None
        if refresh:
            rows = cols.unsqueeze(0).expand(B, T)
            ids, pos = input_ids, positions
        else:
            rows = plan.rows
            ids, pos = input_ids.gather(1, rows), positions.gather(1, rows)
        key_mask = valid if plan.kv_limit is None else valid & (cols < plan.kv_limit).unsqueeze(0)
        scale = 1.0 / math.sqrt(self.spec.head_dim)
        need_probs = plan.need_attention
        attention: list[Tensor] | None = [] if need_probs else None

        h = self.embed_tokens(ids)
        for i, parts in enumerate(self._parts()):
            k_cache, v_cache = cache.k[i], cache.v[i]

            def attend(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor = k_cache,
                       v_cache: Tensor = v_cache) -> tuple[Tensor, Tensor]:
                ops.kv_cache_update(k_cache, v_cache, k, v, rows, pos, self.spec.rope_theta)
                return ops.partial_attention(q, k_cache, v_cache, key_mask, scale, need_probs)

            h, probs = self._layer(parts, h, pos, attend)
            if attention is not None:
                attention.append(probs)

        # LM head only on the hidden rows that predict logit_positions.  Where each needed column
        # sits inside ``rows`` comes from a (B, T) scatter map, so no host sync is needed.
        need = self.hidden_columns(logit_positions)
        if refresh:
            sel = need
        else:
            where = torch.zeros(B, T, dtype=torch.long, device=rows.device)
            where.scatter_(1, rows, torch.arange(rows.shape[1], device=rows.device).unsqueeze(0).expand_as(rows))
            sel = where.gather(1, need)
            if rows.device.type == "cpu":  # a policy bug would otherwise read a wrong row silently
                _check_rows_cover(rows, sel, need, logit_positions)
        hs = h.gather(1, sel.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        return ForwardOutput(logits=self._logits(hs), positions=logit_positions, rows=rows, attention=attention)

    def full_logits(self, input_ids: Tensor, valid: Tensor | None = None) -> Tensor:
        """Ordinary full forward without a cache (keys rotated in place, attention over them)."""
        if valid is None:
            valid = torch.ones_like(input_ids, dtype=torch.bool)
        # Positions restart at 0 on each sequence's first real token (left padding does not shift).
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        scale = 1.0 / math.sqrt(self.spec.head_dim)
        theta = self.spec.rope_theta

        def attend(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            return ops.partial_attention(q, ops.apply_rope(k, positions, theta), v, valid, scale, False)

        h = self.embed_tokens(input_ids)
        for parts in self._parts():
            h, _ = self._layer(parts, h, positions, attend)
        if self.spec.shifted_logits:
            h = torch.cat([h[:, :1], h[:, :-1]], dim=1)
        return self._logits(h)


def _check_rows_cover(rows: Tensor, sel: Tensor, need: Tensor, logit_positions: Tensor) -> None:
    bad = rows.gather(1, sel) != need
    if bool(bad.any()):
        b, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"ForwardPlan.rows of sequence {b} lacks column {int(need[b, j])}, the hidden row that "
                         f"predicts logit position {int(logit_positions[b, j])} (rows must include each logit "
                         "position's column, or the column before it for shifted-logit models)")
