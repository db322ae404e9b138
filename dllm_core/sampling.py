"""Token choice and confidence from logits, shared by schedulers (public plugin API).

All functions work on (..., V) logits, never synchronise with the host, and draw randomness
only from the given generator, so results are reproducible from a seed.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

ConfidenceKind = Literal["max_prob", "margin", "neg_entropy"]


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (others -> -inf)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop = cum > top_p
    drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses top_p
    drop[..., 0] = False
    remove = torch.zeros_like(drop).scatter(-1, order, drop)
    return logits.masked_fill(remove, float("-inf"))


def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    """Keep the ``top_k`` largest logits (others -> -inf)."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def gumbel_argmax(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """A sample of softmax(logits) by the exponential race (no host synchronisation)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    race = logits.float() - torch.log(-torch.log(u.clamp_min(1e-20)))
    return race.argmax(dim=-1)


def sample_plain_confidence(logits: Tensor, *, temperature: float = 0.0,
                            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """LLaDA's rule: the argmax, or a sample of softmax(logits / temperature) (its Gumbel trick), with
    the confidence taken from the *untempered* softmax.  Returns ``(tokens, confidence)`` in float32;
    p(token) = exp(logit - logsumexp), so no (.., V) probability tensor is materialised."""
    logits = logits.float()
    tokens = gumbel_argmax(logits / temperature, generator) if temperature > 0 else logits.argmax(-1)
    conf = (logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)).exp()
    return tokens, conf


def choose_tokens(logits: Tensor, *, temperature: float = 0.0, generator: torch.Generator | None = None,
                  top_p: float | None = None, top_k: int | None = None,
                  confidence: ConfidenceKind = "max_prob") -> tuple[Tensor, Tensor]:
    """Pick a token per row and its confidence.

    Greedy at ``temperature == 0`` (argmax), otherwise a sample of softmax(logits / temperature)
    after the optional top-p / top-k filters.  Confidence kinds: ``max_prob`` = probability of
    the chosen token; ``margin`` = top-1 minus top-2 probability; ``neg_entropy`` = sum p log p.
    Probabilities are those of the filtered, tempered distribution (Dream's ``sample_tokens``).
    Returns ``(tokens, confidence)``, confidence in float32.
    """
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    if top_k is not None and top_k > 0:
        logits = top_k_filter(logits, top_k)
    if temperature > 0:
        tokens = gumbel_argmax(logits, generator)
    else:
        tokens = logits.argmax(dim=-1)
    logp = torch.log_softmax(logits, dim=-1)
    if confidence == "max_prob":
        conf = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).exp()
    elif confidence == "margin":
        top2 = torch.topk(logp, 2, dim=-1).values.exp()
        conf = top2[..., 0] - top2[..., 1]
    elif confidence == "neg_entropy":
        p = logp.exp()
        conf = (p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
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
