"""Model-side pieces of testbed training: configs, init, the LLaDA SFT loss, a greedy decoder.

Kept apart from ``train_testbed.py`` (the driver) so each file stays small and the decoder can be
reused by a test.  The decoder is deliberately independent of the engine: it is the reference
"vanilla" decoding (full forward every step, one token per step, most confident masked position
first), used to select the checkpoint while training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from testbed_data import EOS_ID, MASK_ID


def sdpa_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, key_mask: Tensor, scale: float,
                   return_probs: bool = False) -> tuple[Tensor, Tensor]:
    """``dllm_core.ops.partial_attention`` through ``F.scaled_dot_product_attention``: same maths
    (bidirectional, padding mask, GQA), differentiable and fused (no probabilities returned)."""
    group = q.shape[2] // k_cache.shape[2]
    k = k_cache.repeat_interleave(group, dim=2) if group > 1 else k_cache
    v = v_cache.repeat_interleave(group, dim=2) if group > 1 else v_cache
    k, v = k.to(q.dtype), v.to(q.dtype)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=key_mask[:, None, None, :], scale=scale)
    return out.transpose(1, 2), q.new_empty(0, dtype=torch.float32)


@contextmanager
def trainable_attention() -> Iterator[None]:
    """Route the model's attention through :func:`sdpa_attention` for the duration.

    The compiled ``dllm_core`` attention op is inference-only (no autograd kernel), so training
    must not reach it; the models call ``ops.partial_attention`` through the module attribute,
    which is what is swapped here.
    """
    import dllm_core.ops as ops

    saved = ops.partial_attention
    ops.partial_attention = sdpa_attention
    try:
        yield
    finally:
        ops.partial_attention = saved


def llada_config(d_model: int, n_layers: int, n_heads: int, mlp_hidden: int, vocab_size: int,
                 max_len: int) -> dict[str, Any]:
    """An upstream-style LLaDA ``config.json`` (the keys GSAI-ML/LLaDA-8B-Instruct's has that matter)."""
    return {
        "architectures": ["LLaDAModelLM"], "model_type": "llada",
        "activation_type": "silu", "alibi": False, "attention_layer_norm": False, "block_type": "llama",
        "block_group_size": 1, "bias_for_layer_norm": False, "include_bias": False, "include_qkv_bias": False,
        "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True, "rope": True,
        "rope_full_precision": True, "scale_logits": False, "flash_attention": False,
        "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_heads,
        "mlp_hidden_size": mlp_hidden, "mlp_ratio": mlp_hidden // d_model or 1,
        "vocab_size": vocab_size, "embedding_size": vocab_size, "max_sequence_length": max_len,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "weight_tying": False,
        "mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID,
        "attention_dropout": 0.0, "embedding_dropout": 0.0, "residual_dropout": 0.0,
        "init_std": 0.02, "use_cache": False,
    }


def init_weights(model: nn.Module, n_layers: int, std: float = 0.02) -> None:
    """GPT-2 style init: N(0, std) everywhere, residual output projections scaled by 1/sqrt(2L),
    norm gains 1.  ``from_config`` leaves weights uninitialised (it is also used on meta)."""
    for name, p in model.named_parameters():
        if p.dim() == 1:
            nn.init.ones_(p)
        elif name.endswith(("attn_out.weight", "ff_out.weight")) and ".blocks." in name:
            nn.init.normal_(p, 0.0, std / math.sqrt(2 * n_layers))
        else:
            nn.init.normal_(p, 0.0, std)


def mdm_loss(model: Any, x: Tensor, valid: Tensor, gen_start: int, generator: torch.Generator,
             eps: float = 1e-3) -> Tensor:
    """LLaDA SFT loss on a batch laid out as ``[left-padded prompt | answer + EOS padding]``.

    Each sequence draws t ~ U(eps, 1) (stratified over the batch for lower variance) and masks
    every generation-region token (EOS padding included, so the model learns where to stop) with
    probability t; the prompt is never masked.  The loss is the cross-entropy on masked tokens
    weighted by 1/t, normalised by the generation length and the batch size (LLaDA's SFT
    normalisation by answer length, which here is fixed).
    """
    B, T = x.shape
    L = T - gen_start
    u = (torch.arange(B, device=x.device) + torch.rand(B, device=x.device, generator=generator)) / B
    t = (1 - eps) * u + eps
    t = t[torch.randperm(B, device=x.device, generator=generator)]
    masked = torch.rand(B, L, device=x.device, generator=generator) < t.unsqueeze(1)
    noisy = x.clone()
    noisy[:, gen_start:] = torch.where(masked, torch.full_like(masked, MASK_ID, dtype=torch.long), x[:, gen_start:])
    logits = model.full_logits(noisy, valid)[:, gen_start:]
    ce = F.cross_entropy(logits.reshape(B * L, -1).float(), x[:, gen_start:].reshape(-1), reduction="none")
    weighted = ce.view(B, L) * masked / t.unsqueeze(1)
    return weighted.sum() / (B * L)


@torch.no_grad()
def greedy_decode(model: Any, prompts: list[list[int]], gen_length: int) -> list[list[int]]:
    """Vanilla low-confidence decoding: full forward each step, commit the single most confident
    masked position (probability of its argmax token), greedy.  Same left-padded layout as the
    engine.  Returns the generated ids per prompt, cut before the first EOS."""
    device = next(model.parameters()).device
    P = max(len(p) for p in prompts)
    B = len(prompts)
    x = torch.full((B, P + gen_length), EOS_ID, dtype=torch.long)
    valid = torch.zeros_like(x, dtype=torch.bool)
    for i, p in enumerate(prompts):
        x[i, P - len(p):P] = torch.tensor(p)
        valid[i, P - len(p):] = True
    x[:, P:] = MASK_ID
    x, valid = x.to(device), valid.to(device)
    rows = torch.arange(B, device=device)
    for _ in range(gen_length):
        logits = model.full_logits(x, valid)[:, P:].float()
        probs = torch.softmax(logits, -1)
        conf, tok = probs.max(-1)
        conf = conf.masked_fill(x[:, P:] != MASK_ID, -1.0)
        pos = conf.argmax(-1)
        x[rows, P + pos] = tok[rows, pos]
    out = []
    for row in x[:, P:].tolist():
        cut = row.index(EOS_ID) if EOS_ID in row else len(row)
        out.append(row[:cut])
    return out


@torch.no_grad()
def ar_greedy(model: Any, prompts: list[list[int]], gen_length: int) -> list[list[int]]:
    """Greedy decoding of a causal LM with a KV cache (left padding, explicit positions)."""
    device = next(model.parameters()).device
    P, B = max(len(p) for p in prompts), len(prompts)
    ids = torch.full((B, P), EOS_ID, dtype=torch.long)
    att = torch.zeros((B, P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p)
        att[i, P - len(p):] = 1
    ids, att = ids.to(device), att.to(device)
    pos = (att.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True)
    past, outs = out.past_key_values, []
    nxt = out.logits[:, -1].argmax(-1)
    last = pos[:, -1]
    for _ in range(gen_length):
        outs.append(nxt)
        att = torch.cat([att, torch.ones((B, 1), dtype=att.dtype, device=device)], 1)
        last = last + 1
        out = model(input_ids=nxt[:, None], attention_mask=att, position_ids=last[:, None],
                    past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1)
    res = []
    for row in torch.stack(outs, 1).tolist():
        cut = row.index(EOS_ID) if EOS_ID in row else len(row)
        res.append(row[:cut])
    return res


def cosine_lr(step: int, total: int, base: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``floor * base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
