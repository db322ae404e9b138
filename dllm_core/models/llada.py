"""LLaDA (GSAI-ML/LLaDA-8B-*): OLMo's "llama" block with bidirectional attention.

Parameter names follow the upstream checkpoint (``model.transformer.wte.weight``,
``model.transformer.blocks.{i}.q_proj.weight``, ...), so an upstream ``load_state_dict`` works as is.
The MLP is OLMo's: ``ff_out(act(ff_proj(x)) * up_proj(x))``, i.e. ``ff_proj`` is the gated branch.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelFilesError
from .base import ModelSpec
from .transformer import LayerParts, RMSNorm, TransformerLM, swiglu

#: Upstream option values this implementation supports (anything else would load but compute wrong).
_REQUIRED = {"block_type": "llama", "layer_norm_type": "rms", "rope": True, "alibi": False, "include_bias": False,
             "include_qkv_bias": False, "attention_layer_norm": False, "block_group_size": 1,
             "activation_type": "silu", "layer_norm_with_affine": True}


class LLaDABlock(nn.Module):
    """One OLMo llama block (upstream names)."""

    def __init__(self, d: int, heads: int, kv_heads: int, head_dim: int, mlp_hidden: int, eps: float) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d, eps)
        self.q_proj = nn.Linear(d, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * head_dim, bias=False)
        self.attn_out = nn.Linear(heads * head_dim, d, bias=False)
        self.ff_norm = RMSNorm(d, eps)
        self.ff_proj = nn.Linear(d, mlp_hidden, bias=False)
        self.up_proj = nn.Linear(d, mlp_hidden, bias=False)
        self.ff_out = nn.Linear(mlp_hidden, d, bias=False)

    def mlp(self, x: Tensor) -> Tensor:
        return swiglu(x, self.ff_proj, self.up_proj, self.ff_out)

    def parts(self) -> LayerParts:
        return LayerParts(self.attn_norm, self.q_proj, self.k_proj, self.v_proj, self.attn_out, self.ff_norm,
                          self.mlp, gate_proj=self.ff_proj, up_proj=self.up_proj, down_proj=self.ff_out)


class LLaDAModel(TransformerLM):
    """LLaDA masked diffusion LM (logits aligned: column i predicts token i)."""

    family = "llada"

    def __init__(self, spec: ModelSpec, mlp_hidden: int, eps: float, *, weight_tying: bool = False,
                 input_emb_norm: bool = False, scale_logits: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.weight_tying = weight_tying
        self.input_emb_norm = input_emb_norm
        self.logit_scaling = scale_logits
        transformer = nn.ModuleDict({
            "wte": nn.Embedding(spec.vocab_size, spec.hidden_size),
            "blocks": nn.ModuleList(LLaDABlock(spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim,
                                               mlp_hidden, eps) for _ in range(spec.num_layers)),
            "ln_f": RMSNorm(spec.hidden_size, eps),
        })
        if not weight_tying:
            transformer["ff_out"] = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        else:
            self.ignored_checkpoint_keys = ("model.transformer.ff_out.weight",)
        self.model = nn.Module()
        self.model.transformer = transformer

    @classmethod
    def matches_config(cls, config: dict[str, Any]) -> bool:
        return (str(config.get("model_type", "")).lower() == "llada"
                or "LLaDAModelLM" in (config.get("architectures") or []))

    @classmethod
    def spec_from_config(cls, config: dict[str, Any]) -> ModelSpec:
        d, heads = int(config["d_model"]), int(config["n_heads"])
        kv = config.get("n_kv_heads") or (1 if config.get("multi_query_attention") else heads)
        eos = config.get("eos_token_id", 126081)
        return ModelSpec(
            family=cls.family, vocab_size=int(config.get("embedding_size") or config["vocab_size"]),
            hidden_size=d, num_layers=int(config["n_layers"]), num_heads=heads, num_kv_heads=int(kv),
            head_dim=d // heads, max_length=int(config.get("max_sequence_length", 4096)),
            rope_theta=float(config.get("rope_theta", 10000.0)), mask_id=int(config.get("mask_token_id", 126336)),
            eos_id=int(eos), pad_id=int(config.get("pad_token_id", eos)), shifted_logits=False,
            bos_id=config.get("bos_token_id"))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LLaDAModel":
        wrong = {k: config[k] for k, want in _REQUIRED.items() if k in config and config[k] != want}
        if wrong:
            raise ModelFilesError(f"config.json: LLaDA options {wrong} are not supported (supported: "
                                  f"{ {k: _REQUIRED[k] for k in wrong} })")
        spec = cls.spec_from_config(config)
        mlp_hidden = int(config.get("mlp_hidden_size") or config.get("mlp_ratio", 4) * spec.hidden_size)
        return cls(spec, mlp_hidden, float(config.get("rms_norm_eps", 1e-5)),
                   weight_tying=bool(config.get("weight_tying", False)),
                   input_emb_norm=bool(config.get("input_emb_norm", False)),
                   scale_logits=bool(config.get("scale_logits", False)))

    # -- parts for the shared driver -----------------------------------------------------------

    def layer_parts(self) -> list[LayerParts]:
        return [block.parts() for block in self.model.transformer["blocks"]]

    def embed_tokens(self, ids: Tensor) -> Tensor:
        x = F.embedding(ids, self.model.transformer["wte"].weight)
        return x * (self.spec.hidden_size ** 0.5) if self.input_emb_norm else x

    def final_norm(self, h: Tensor) -> Tensor:
        return self.model.transformer["ln_f"](h)

    def head_weight(self) -> Tensor:
        t = self.model.transformer
        return t["wte"].weight if self.weight_tying else t["ff_out"].weight

    def scale_logits(self, logits: Tensor) -> Tensor:
        return logits * (self.spec.hidden_size ** -0.5) if self.logit_scaling else logits
