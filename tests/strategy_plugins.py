"""Test helpers for the paper strategies: their plugin modules and tiny causal LMs for the guide.

The strategy plugins register through the ``dllm_core`` entry-point group (read from
pyproject.toml in an uninstalled source tree).  An installed distribution whose entry points
predate a strategy would hide it, so :data:`PLUGINS` holds the strategy modules the default
plugin manager did not load (normally none), and the tests pass them to every engine.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from dllm_core import Registry, make_plugin_manager

#: plugin module -> (kind, a name it registers)
_MODULES = {"dllm_plugins.fast_dllm": ("cache", "dual"), "dllm_plugins.flash_dlm": ("cache", "freecache"),
            "dllm_plugins.d2cache": ("cache", "d2cache")}


def strategy_plugins() -> list[object]:
    """The strategy plugin modules that the default plugin manager does not load by itself."""
    registry = Registry.from_plugin_manager(make_plugin_manager())
    out = []
    for module, (kind, name) in _MODULES.items():
        if name not in registry.names(kind):
            try:
                out.append(importlib.import_module(module))
            except ImportError:  # a strategy that is not written yet
                pass
    return out


PLUGINS = strategy_plugins()


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
