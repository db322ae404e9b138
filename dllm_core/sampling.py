"""Token choice and confidence from logits, shared by schedulers (public plugin API).

All functions work on (..., V) logits in any floating dtype (the engine passes the model's:
bfloat16 for LLaDA/Dream checkpoints), compute in float32, never synchronise with the host, and
draw randomness only from the given generator, so results are reproducible from a seed.  The
greedy max-probability confidence reads the logits once through the fused
:func:`dllm_core.ops.argmax_confidence` (no float32 copy of the (rows, V) logits); the paths that
need whole distributions (sampling, filters, margin, entropy) upcast to float32 themselves.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from . import ops

ConfidenceKind = Literal["max_prob", "margin", "neg_entropy"]


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (others -> -inf)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cum = torch.softmax(sorted_logits, dim=-1)
    del sorted_logits  # (rows, V) buffers are the step's largest: hold as few as possible at once
    drop = cum.cumsum_(dim=-1) > top_p
    del cum
    drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses top_p
    drop[..., 0] = False
    remove = torch.zeros_like(drop).scatter_(-1, order, drop)
    return logits.masked_fill(remove, float("-inf"))


def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    """Keep the ``top_k`` largest logits (others -> -inf)."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def gumbel_argmax(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """A sample of softmax(logits) by the exponential race (no host synchronisation).

    ``argmax(logits - log(-log(u)))`` in float32, computed in the one (..., V) buffer of the uniform
    draws."""
    race = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    race.clamp_min_(1e-20).log_().neg_().log_()          # log(-log(u))
    torch.sub(logits, race, out=race)                     # logits (upcast exactly) - log(-log(u))
    return race.argmax(dim=-1)


def _float_copy(logits: Tensor) -> Tensor:
    """A float32 tensor of ``logits`` that the caller may overwrite."""
    return logits.to(torch.float32, copy=True)


def sample_plain_confidence(logits: Tensor, *, temperature: float = 0.0,
                            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """LLaDA's rule: the argmax, or a sample of softmax(logits / temperature) (its Gumbel trick), with
    the confidence taken from the *untempered* softmax.  Returns ``(tokens, confidence)``, confidence
    float32.  Greedy: the fused :func:`dllm_core.ops.argmax_confidence`, reading the logits in their
    dtype once.  Sampling: p(token) = exp(logit - logsumexp) in float32, so no (.., V) probability
    tensor is materialised."""
    if temperature <= 0:
        return ops.argmax_confidence(logits)
    lf = logits.float()
    tokens = gumbel_argmax(_float_copy(lf).div_(temperature), generator)
    conf = (lf.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lf, -1)).exp()
    return tokens, conf


def choose_tokens(logits: Tensor, *, temperature: float = 0.0, generator: torch.Generator | None = None,
                  top_p: float | None = None, top_k: int | None = None,
                  confidence: ConfidenceKind = "max_prob") -> tuple[Tensor, Tensor]:
    """Pick a token per row and its confidence.

    Greedy at ``temperature == 0`` (argmax), otherwise a sample of softmax(logits / temperature)
    after the optional top-p / top-k filters.  Confidence kinds: ``max_prob`` = probability of
    the chosen token; ``margin`` = top-1 minus top-2 probability; ``neg_entropy`` = sum p log p.
    Probabilities are those of the filtered, tempered distribution (Dream's ``sample_tokens``).
    Returns ``(tokens, confidence)``, confidence in float32.  Greedy ``max_prob`` without filters
    goes through the fused :func:`dllm_core.ops.argmax_confidence` (no float32 copy of the logits).
    """
    filtered = (top_p is not None and top_p < 1.0) or (top_k is not None and 0 < top_k < logits.shape[-1])
    if temperature <= 0 and confidence == "max_prob" and not filtered:
        return ops.argmax_confidence(logits)
    if temperature > 0:
        logits = _float_copy(logits).div_(temperature)
    else:
        logits = logits.float()
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    if top_k is not None and top_k > 0:
        logits = top_k_filter(logits, top_k)
    if temperature > 0:
        tokens = gumbel_argmax(logits, generator)
    else:
        tokens = logits.argmax(dim=-1)
    logp = torch.log_softmax(logits, dim=-1)
    del logits  # the float32 logits are not needed past this point: one (rows, V) buffer less
    if confidence == "max_prob":
        conf = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).exp()
    elif confidence == "margin":
        top2 = torch.topk(logp, 2, dim=-1).values.exp()
        conf = top2[..., 0] - top2[..., 1]
    elif confidence == "neg_entropy":
        p = logp.exp()
        # p * (logp where p > 0, else 0), in place in logp (p log p -> 0 where p underflows)
        conf = p.mul_(logp.masked_fill_(~(p > 0), 0.0)).sum(-1)
    else:  # pragma: no cover - guarded by the Literal type
        raise ValueError(f"unknown confidence kind {confidence!r}")
    return tokens, conf


def select_top(scores: Tensor, counts: Tensor, candidates: Tensor) -> Tensor:
    """(B, r) bool: per row, the ``counts[b]`` highest-scoring candidates (ties -> lower index).

    ``counts`` is (B,) long; rows commit ``min(counts, #candidates)``.
    """
    masked = torch.where(candidates, scores.float(), torch.full_like(scores, float("-inf"), dtype=torch.float32))
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device)
                                            .expand_as(order).contiguous())
    return (rank < counts.unsqueeze(-1)) & candidates
