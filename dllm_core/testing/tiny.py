"""Tiny random LLaDA / Dream models in the upstream formats, for tests and examples.

The configs are upstream-format ``config.json`` dicts (vocab 128, hidden 64, 2 layers, 4 heads of
16; Dream with 2 KV heads), so the same loader and name mapping as for the real checkpoints is
exercised.  The random init is deterministic per seed and scaled so that logits are far from flat
and greedy predictions differ between positions.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.base import DiffusionLM
from ..models.dream import DreamModel
from ..models.llada import LLaDAModel
from ..models.loading import save_checkpoint
from ..models.transformer import RMSNorm

#: The built-in families by registry name (what ``load_model`` takes as ``families``).
FAMILIES: dict[str, type[DiffusionLM]] = {"llada": LLaDAModel, "dream": DreamModel}

TINY_VOCAB, TINY_MASK_ID, TINY_EOS_ID = 128, 127, 1

_LLADA = {
    "architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu", "alibi": False,
    "attention_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 64,
    "embedding_size": TINY_VOCAB, "vocab_size": TINY_VOCAB, "eos_token_id": TINY_EOS_ID,
    "pad_token_id": TINY_EOS_ID, "mask_token_id": TINY_MASK_ID, "include_bias": False, "include_qkv_bias": False,
    "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
    "max_sequence_length": 512, "mlp_hidden_size": 128, "mlp_ratio": 2, "n_heads": 4, "n_kv_heads": 4,
    "n_layers": 2, "rms_norm_eps": 1e-5, "rope": True, "rope_full_precision": True, "rope_theta": 10000.0,
    "scale_logits": False, "weight_tying": False, "torch_dtype": "float32",
}
_DREAM = {
    "architectures": ["DreamModel"], "model_type": "Dream", "hidden_act": "silu", "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
    "vocab_size": TINY_VOCAB, "mask_token_id": TINY_MASK_ID, "bos_token_id": TINY_EOS_ID,
    "eos_token_id": TINY_EOS_ID, "pad_token_id": TINY_EOS_ID, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False,
    "use_sliding_window": False, "sliding_window": None, "torch_dtype": "float32",
}
_CONFIGS = {"llada": _LLADA, "dream": _DREAM}

#: Extra gain on the projections whose scale shapes the outputs most: sharper attention, peakier logits.
_GAINS = {"q_proj": 1.5, "k_proj": 1.5, "lm_head": 2.0, "model.transformer.ff_out": 2.0}


def tiny_config(family: str, **overrides: Any) -> dict[str, Any]:
    """An upstream-format config.json dict for a tiny model of ``family``; keys use upstream names."""
    try:
        base = _CONFIGS[family]
    except KeyError:
        raise ValueError(f"no tiny config for family {family!r}; available: {', '.join(_CONFIGS)}") from None
    return {**base, **overrides}


def init_random(model: nn.Module, seed: int = 0) -> None:
    """Deterministic random init (float32 draws, so every dtype gets the same values rounded)."""
    g = torch.Generator().manual_seed(seed)

    def draw(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        with torch.no_grad():
            t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    for name, module in model.named_modules():
        gain = next((v for k, v in _GAINS.items() if name == k or name.endswith("." + k)), 1.0)
        if isinstance(module, nn.Embedding):
            draw(module.weight, 1.0)
        elif isinstance(module, nn.Linear):
            draw(module.weight, gain / math.sqrt(module.in_features))
            if module.bias is not None:
                draw(module.bias, 0.1)
        elif isinstance(module, RMSNorm):
            draw(module.weight, 0.1, mean=1.0)


def make_tiny_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                    **overrides: Any) -> DiffusionLM:
    """A tiny random model of ``family`` (config from :func:`tiny_config` with ``overrides``), in eval mode."""
    model = FAMILIES[family].from_config(tiny_config(family, **overrides))
    init_random(model, seed)
    return model.to(dtype).eval()


def write_tiny_checkpoint(model_dir: str | os.PathLike[str], family: str, seed: int = 0, shards: int = 1,
                          dtype: torch.dtype = torch.float32, **overrides: Any) -> Path:
    """Save a tiny random model as an upstream-layout checkpoint (``shards`` > 1: sharded with an index)."""
    model = make_tiny_model(family, seed, dtype, **overrides)
    return save_checkpoint(model, model_dir, config=tiny_config(family, **overrides), num_shards=shards)
