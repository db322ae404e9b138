"""Dream (Dream-org/Dream-v0-*-7B): the Qwen2.5 architecture with bidirectional attention.

Parameter names follow the upstream checkpoint (``model.layers.{i}.self_attn.q_proj.weight``, ...).
Dream keeps its autoregressive heritage in the logits: token i is predicted from hidden row i - 1
(``shifted_logits``), with column 0 predicted from itself as every upstream code does.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelFilesError
from .base import ModelSpec
from .transformer import LayerParts, RMSNorm, SwiGLU, TransformerLM


class DreamAttention(nn.Module):
    """Qwen2 attention projections: biased q/k/v, unbiased output."""

    def __init__(self, d: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d, heads * head_dim, bias=True)
        self.k_proj = nn.Linear(d, kv_heads * head_dim, bias=True)
        self.v_proj = nn.Linear(d, kv_heads * head_dim, bias=True)
        self.o_proj = nn.Linear(heads * head_dim, d, bias=False)


class DreamLayer(nn.Module):
    """One Qwen2 decoder layer (upstream names)."""

    def __init__(self, d: int, heads: int, kv_heads: int, head_dim: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(d, eps)
        self.self_attn = DreamAttention(d, heads, kv_heads, head_dim)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.mlp = SwiGLU(d, intermediate)

    def parts(self) -> LayerParts:
        a = self.self_attn
        m = self.mlp
        return LayerParts(self.input_layernorm, a.q_proj, a.k_proj, a.v_proj, a.o_proj,
                          self.post_attention_layernorm, m, gate_proj=m.gate_proj, up_proj=m.up_proj,
                          down_proj=m.down_proj)


class DreamModel(TransformerLM):
    """Dream diffusion LM with shifted logits."""

    family = "dream"

    def __init__(self, spec: ModelSpec, intermediate: int, eps: float, *, tie_word_embeddings: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.tie_word_embeddings = tie_word_embeddings
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.model.layers = nn.ModuleList(
            DreamLayer(spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, intermediate, eps)
            for _ in range(spec.num_layers))
        self.model.norm = RMSNorm(spec.hidden_size, eps)
        if tie_word_embeddings:
            self.ignored_checkpoint_keys = ("lm_head.weight",)
        else:
            self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)

    @classmethod
    def matches_config(cls, config: dict[str, Any]) -> bool:
        return (str(config.get("model_type", "")).lower() == "dream"
                or "DreamModel" in (config.get("architectures") or []))

    @classmethod
    def spec_from_config(cls, config: dict[str, Any]) -> ModelSpec:
        d, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        eos = config.get("eos_token_id", 151643)
        return ModelSpec(
            family=cls.family, vocab_size=int(config["vocab_size"]), hidden_size=d,
            num_layers=int(config["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or d // heads),
            max_length=int(config.get("max_position_embeddings", 32768)),
            rope_theta=float(config.get("rope_theta", 10000.0)), mask_id=int(config.get("mask_token_id", 151666)),
            eos_id=int(eos), pad_id=int(config.get("pad_token_id", eos)), shifted_logits=True,
            bos_id=config.get("bos_token_id"))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "DreamModel":
        unsupported = {k: config[k] for k in ("rope_scaling", "use_sliding_window", "use_mrope") if config.get(k)}
        if config.get("hidden_act", "silu") != "silu":
            unsupported["hidden_act"] = config["hidden_act"]
        if unsupported:
            raise ModelFilesError(f"config.json: Dream options {unsupported} are not supported "
                                  "(no rope scaling, no sliding window, hidden_act silu)")
        return cls(cls.spec_from_config(config), int(config["intermediate_size"]),
                   float(config.get("rms_norm_eps", 1e-6)),
                   tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))

    # -- parts for the shared driver -----------------------------------------------------------

    def layer_parts(self) -> list[LayerParts]:
        return [layer.parts() for layer in self.model.layers]

    def embed_tokens(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.model.embed_tokens.weight)

    def final_norm(self, h: Tensor) -> Tensor:
        return self.model.norm(h)

    def head_weight(self) -> Tensor:
        return self.model.embed_tokens.weight if self.tie_word_embeddings else self.lm_head.weight
