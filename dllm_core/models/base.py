"""The interface every diffusion LM family implements, and its preallocated K/V cache."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..state import ForwardOutput, ForwardPlan


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts the engine and components rely on (read from config.json)."""

    family: str               #: registry name of the family ("llada", "dream", ...)
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_length: int           #: the longest prompt + generation the model accepts
    rope_theta: float
    mask_id: int
    eos_id: int
    pad_id: int
    shifted_logits: bool      #: Dream: the logit of column i comes from hidden row i - 1
    bos_id: int | None = None


@dataclass
class KVCache:
    """Per-layer keys (post-RoPE) and values, each (B, T, Hkv, D), preallocated for a generation."""

    k: list[Tensor]
    v: list[Tensor]

    @classmethod
    def allocate(cls, spec: ModelSpec, batch: int, length: int, *, dtype: torch.dtype,
                 device: torch.device | str) -> "KVCache":
        shape = (batch, length, spec.num_kv_heads, spec.head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(spec.num_layers)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(spec.num_layers)])

    @property
    def length(self) -> int:
        return self.k[0].shape[1]


class DiffusionLM(nn.Module, ABC):
    """A masked-diffusion language model with a *partial forward*.

    Subclasses (one file per family) hold the weights under the upstream Hugging Face tensor
    names so that ``load_state_dict`` of an upstream checkpoint works unchanged.
    """

    #: Registry name of the family.
    family: ClassVar[str] = ""

    spec: ModelSpec

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any]) -> "DiffusionLM":
        """Build the module (weights uninitialised) from an upstream ``config.json`` mapping."""

    @classmethod
    def matches_config(cls, config: dict[str, Any]) -> bool:
        """True when ``config.json`` describes this family (used to pick a family for a directory)."""
        return False

    def new_kv_cache(self, batch: int, length: int) -> KVCache:
        p = next(self.parameters())
        return KVCache.allocate(self.spec, batch, length, dtype=p.dtype, device=p.device)

    @abstractmethod
    def forward(self, input_ids: Tensor, positions: Tensor, valid: Tensor, cache: KVCache,
                plan: ForwardPlan, logit_positions: Tensor) -> ForwardOutput:
        """Partial forward.

        input_ids, positions, valid: (B, T) for the whole sequence.  Only ``plan.rows`` (all
        columns when None) go through the layers; each layer writes their K/V into ``cache``
        (RoPE applied to K) and attends from them to every cached column that is ``valid`` and
        below ``plan.kv_limit``.  Logits (in the model's dtype) are produced only for ``logit_positions``
        (B, r): for shifted-logit models from the hidden row before each position.  When
        ``plan.need_attention`` the head-averaged attention probabilities of the rows are returned
        per layer.
        """

    @abstractmethod
    def full_logits(self, input_ids: Tensor, valid: Tensor | None = None) -> Tensor:
        """(B, T, V) logits of an ordinary full forward (no cache), in the model's dtype, aligned so
        that entry i predicts token i (shift already applied).  Used by training and by tests."""
