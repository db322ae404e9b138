"""Test helpers for the paper strategies: tiny causal LMs standing in for the guide model."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn




class TokenCache:
    """The smallest cache a guide model can return: the ids it holds, cropped like a DynamicCache."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def crop(self, max_length: int) -> None:
        self.ids = self.ids[:max_length] if max_length >= 0 else self.ids[:len(self.ids) + max_length]

    def get_seq_length(self) -> int:
        return len(self.ids)


class TinyCausalLM(nn.Module):
    """A bigram causal LM over ``vocab`` ids with the transformers calling convention.

    ``kind``: ``"random"`` (seeded random bigram logits), ``"uniform"`` (all logits equal: every
    draft is an argmax, so the guide accepts everything) or ``"refuse"`` (every row peaks at
    ``refuse_id``, a token the diffusion model never drafts, so every draft is rejected).
    """

    def __init__(self, vocab: int = 128, kind: str = "random", seed: int = 0, refuse_id: int = 127) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, vocab)
        with torch.no_grad():
            if kind == "random":
                self.embed.weight.copy_(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)) * 3)
            else:
                self.embed.weight.zero_()
                if kind == "refuse":
                    self.embed.weight[:, refuse_id] = 10.0
        self.calls = 0

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids: Tensor, past_key_values: Any = None, use_cache: bool = True) -> SimpleNamespace:
        cache = past_key_values if past_key_values is not None else TokenCache()
        cache.ids = cache.ids + input_ids[0].tolist()
        self.calls += 1
        return SimpleNamespace(logits=self.embed(input_ids), past_key_values=cache)
