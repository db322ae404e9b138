"""Pieces shared by the Llama-style families (LLaDA, Dream): RMSNorm, SwiGLU and the partial-forward driver.

A family file defines its modules under the upstream tensor names and describes each layer to the
driver with a :class:`LayerParts`; :class:`TransformerLM` then implements both the cached partial
forward (:meth:`TransformerLM.forward`) and an independent cache-free full forward
(:meth:`TransformerLM.full_logits`) from those parts, so the two can be checked against each other.
RoPE on keys, cache writes and attention go through :mod:`dllm_core.ops` only, so the compiled
fast paths replace them without touching the models.

Per layer the driver runs ``h, x = add_rms_norm(h, delta, w)`` (the previous layer's MLP output
``delta`` is added into the residual stream inside the next norm), one ``[q; k; v]`` GEMM, the query
RoPE, attention, ``o_proj``, ``add_rms_norm`` again, one ``[gate; up]`` GEMM, ``silu_mul`` and
``down``: the element-wise work is four compiled kernels.  The fused projection weights are made by
:meth:`TransformerLM.fuse_projections` (see :mod:`.fusion`); the loader and the benchmarks' random
builder call it, any other model fuses on its first forward, and where fusing is impossible (a
family without the parts, gradients needed, during CUDA-graph capture, or
``use_fused_projections = False``) the separate projections run.
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
from .fusion import FusedLinear, can_fuse, fuse_linears

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
        # dllm_core.ops.rms_norm_reference is the definition (the code this module always ran).
        return ops.rms_norm(x, self.weight, self.eps)


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
    #: The SwiGLU projections behind ``mlp`` (``mlp(x) == down(silu(gate(x)) * up(x))``); when
    #: given, the driver may fuse gate and up into one GEMM.  None: ``mlp`` runs as it is.
    gate_proj: nn.Module | None = None
    up_proj: nn.Module | None = None
    down_proj: nn.Module | None = None


@dataclass(frozen=True)
class FusedLayer:
    """A layer's fused projections (None where that part cannot be fused)."""

    qkv: FusedLinear | None
    gate_up: FusedLinear | None

    def valid(self) -> bool:
        return all(f is None or f.valid() for f in (self.qkv, self.gate_up))


def _fuse_layer(parts: LayerParts) -> FusedLayer:
    attn = [parts.q_proj, parts.k_proj, parts.v_proj]
    mlp = [parts.gate_proj, parts.up_proj]
    return FusedLayer(fuse_linears(attn) if can_fuse(attn) else None,
                      fuse_linears(mlp) if parts.down_proj is not None and can_fuse(mlp) else None)


def _add_norm(norm: nn.Module, h: Tensor, delta: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(h + delta, norm(h + delta))``, one kernel for RMSNorm (``delta`` None: nothing to add)."""
    if isinstance(norm, RMSNorm):
        if delta is None:
            return h, ops.rms_norm(h, norm.weight, norm.eps)
        return ops.add_rms_norm(h, delta, norm.weight, norm.eps)
    if delta is not None:
        h = h + delta
    return h, norm(h)


class TransformerLM(DiffusionLM):
    """A pre-norm RoPE transformer with bidirectional attention; subclasses supply the parts."""

    #: Checkpoint tensors the loader may drop silently (e.g. a head stored although tied).
    ignored_checkpoint_keys: tuple[str, ...] = ()
    #: False: never fuse projections (the separate q/k/v and gate/up GEMMs run; for tests/comparisons).
    use_fused_projections: bool = True

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

    def fuse_projections(self) -> None:
        """Fuse every layer's q/k/v and gate/up weights in place (see :mod:`.fusion`); idempotent in
        effect.  Called by the loader and the benchmarks' builder; other models fuse on first forward."""
        self.__dict__["_fused_layers"] = [_fuse_layer(p) for p in self._parts()]

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to() / .half() / to_empty() replace every parameter: drop the old fused tensors (else they
        # would stay alive) and fuse the new parameters again.
        was_fused = self.__dict__.pop("_fused_layers", None) is not None
        out = super()._apply(fn, recurse)
        if was_fused:
            self.fuse_projections()
        return out

    def _fused(self, h: Tensor) -> list[FusedLayer] | None:
        """The fused projections to use for a forward on ``h``, fusing (again) when needed and
        possible; None runs the separate projections."""
        if not self.use_fused_projections:
            return None
        fused = self.__dict__.get("_fused_layers")
        if torch.is_grad_enabled():
            parts = self._parts()
            if parts and parts[0].q_proj.weight.requires_grad:
                return None  # training: autograd must see the module parameters
        if fused is not None and all(f.valid() for f in fused):
            return fused
        if h.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None  # a copy inside a graph would be replayed on every call
        self.fuse_projections()
        return self.__dict__["_fused_layers"]

    def _layer(self, parts: LayerParts, fused: FusedLayer | None, h: Tensor, delta: Tensor | None, pos: Tensor,
               attend: AttendFn) -> tuple[Tensor, Tensor, Tensor]:
        """One layer on the residual stream ``h + delta``; returns ``(h', delta', probs)`` where
        ``h' + delta'`` is the layer's output (the add is left to the next norm)."""
        s = self.spec
        B, n, _ = h.shape
        hq, hkv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        h, x = _add_norm(parts.attn_norm, h, delta)
        if fused is not None and fused.qkv is not None:
            q, k, v = F.linear(x, fused.qkv.weight, fused.qkv.bias).split([hq, hkv, hkv], dim=-1)
        else:
            q, k, v = parts.q_proj(x), parts.k_proj(x), parts.v_proj(x)
        q = q.view(B, n, s.num_heads, s.head_dim)
        k = k.view(B, n, s.num_kv_heads, s.head_dim)
        v = v.view(B, n, s.num_kv_heads, s.head_dim)
        q = ops.rope(q, pos, s.rope_theta)
        out, probs = attend(q, k, v)
        h, x = _add_norm(parts.mlp_norm, h, parts.o_proj(out.reshape(B, n, hq)))
        if fused is not None and fused.gate_up is not None and parts.down_proj is not None:
            delta = self._fused_mlp(x, fused.gate_up.weight, parts.down_proj)
        else:
            delta = parts.mlp(x)
        return h, delta, probs

    #: Rows of one MLP chunk: a refresh of 16 x 956 rows of LLaDA-8B would otherwise hold a
    #: (rows, 2 x 12288) [gate | up] activation of 752 MB plus its 376 MB product at once.
    mlp_chunk_rows: int = 4096

    def _fused_mlp(self, x: Tensor, gate_up: Tensor, down: nn.Module) -> Tensor:
        """``down(silu(gate) * up)`` from the fused ``[gate; up]`` weight, in row chunks."""
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] <= self.mlp_chunk_rows:
            return down(ops.silu_mul(F.linear(x, gate_up)))
        out = x.new_empty(x.shape)
        rows = out.view(-1, out.shape[-1])
        for i in range(0, flat.shape[0], self.mlp_chunk_rows):
            rows[i:i + self.mlp_chunk_rows] = down(ops.silu_mul(F.linear(flat[i:i + self.mlp_chunk_rows], gate_up)))
        return out

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
        delta: Tensor | None = None
        fused = self._fused(h)
        for i, parts in enumerate(self._parts()):
            k_cache, v_cache = cache.k[i], cache.v[i]

            def attend(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor = k_cache,
                       v_cache: Tensor = v_cache) -> tuple[Tensor, Tensor]:
                ops.kv_cache_update(k_cache, v_cache, k, v, rows, pos, self.spec.rope_theta)
                return ops.partial_attention(q, k_cache, v_cache, key_mask, scale, need_probs)

            h, delta, probs = self._layer(parts, None if fused is None else fused[i], h, delta, pos, attend)
            if attention is not None:
                attention.append(probs)
        if delta is not None:
            h = h + delta

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
        delta: Tensor | None = None
        fused = self._fused(h)
        for i, parts in enumerate(self._parts()):
            h, delta, _ = self._layer(parts, None if fused is None else fused[i], h, delta, positions, attend)
        if delta is not None:
            h = h + delta
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
