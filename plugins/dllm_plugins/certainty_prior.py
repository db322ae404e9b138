"""Scheduler ``certainty_prior``: d2Cache's certainty-prior-guided decoding (arXiv 2509.23094, Sec. 4.3).

Each masked candidate is scored by its confidence (the probability of the chosen token, float32)
times the certainty density D of its column: a Gaussian (``sigma`` columns wide) weighted count
of the known columns around it, computed over the generated region with the prompt counted as
known (``dllm_core.ops.certainty_density_topk``).  Columns next to known text score higher, so
decoding runs quasi left to right without blocks; small ``sigma`` approaches autoregressive
order, large ``sigma`` plain confidence order.  ``sigma = 0`` turns the prior off (score =
confidence), as d2Cache's documentation recommends when combining with parallel decoding.

Each step commits the ``tokens_per_step`` best candidates (ties: lower column) and, when
``threshold > 0``, also every candidate whose score reaches the threshold (the reference
``confidence_unmasking`` compares the same score it ranks by).  Tokens are the argmax, or a
sample of softmax(logits / temperature) after the optional ``top_p`` filter
(d2Cache's Dream configurations use top_p = 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dllm_core import Commit, DecodeState, ForwardOutput, Options, Scheduler, check_range
from dllm_core.ops import certainty_density_topk
from dllm_core.sampling import choose_tokens


@dataclass(frozen=True)
class CertaintyPriorOptions(Options):
    """``tokens_per_step``: commits per step (at least); ``sigma``: density width, 0 = off;
    ``threshold``: also commit candidates scoring at least this (0 = off); ``top_p``: nucleus
    filter on the logits before choosing tokens (1 = off)."""

    tokens_per_step: int = 1
    sigma: float = 10.0
    threshold: float = 0.0
    top_p: float = 1.0

    def validate(self) -> None:
        check_range("tokens_per_step", self.tokens_per_step, 1)
        check_range("sigma", self.sigma, 0.0)
        check_range("threshold", self.threshold, 0.0, 1.0)
        check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)


def certainty_prior_commit(state: DecodeState, positions: Tensor, confidence: Tensor, candidates: Tensor, *,
                           tokens_per_step: int, sigma: float, threshold: float = 0.0) -> tuple[Tensor, Tensor]:
    """The commit mask (B, r) and the scores (B, r) (-inf off candidates) of one step.

    ``positions`` (B, r) columns with ``confidence`` (B, r); ``candidates`` (B, r) are masked
    columns of the current block (hence inside the generated region, and unique).
    """
    B, G, gs = state.batch_size, state.gen_length, state.gen_start
    rel = positions - gs
    # Map the r slots onto the generated region; non-candidates go to a spare column G.
    idx = torch.where(candidates, rel, torch.full_like(rel, G))
    conf_g = torch.zeros(B, G + 1, dtype=torch.float32, device=positions.device).scatter_(
        1, idx, torch.where(candidates, confidence.to(torch.float32), 0.0))[:, :G]
    cand_g = torch.zeros(B, G + 1, dtype=torch.bool, device=positions.device).scatter_(1, idx, candidates)[:, :G]
    n = min(tokens_per_step, G)
    if sigma > 0:
        known = ~state.masked[:, gs:gs + G]
        scores_g, top = certainty_density_topk(known, conf_g, cand_g, sigma, n)
    else:
        scores_g = torch.where(cand_g, conf_g, torch.full_like(conf_g, float("-inf")))
        top = torch.sort(scores_g, dim=1, descending=True, stable=True).indices[:, :n]
    commit_g = torch.zeros_like(cand_g).scatter_(1, top, True) & cand_g
    if threshold > 0:
        commit_g |= cand_g & (scores_g >= threshold)
    back = idx.clamp(max=G - 1)
    mask = commit_g.gather(1, back) & candidates
    scores = torch.where(candidates, scores_g.gather(1, back), torch.full_like(conf_g[:, :1], float("-inf")))
    return mask, scores


class CertaintyPrior(Scheduler):
    """Commit by confidence x certainty density (quasi left-to-right), ``tokens_per_step`` per step."""

    description = "d2Cache: commit by confidence x certainty density (quasi left-to-right)"
    Options = CertaintyPriorOptions

    def select(self, state: DecodeState, out: ForwardOutput, candidates: Tensor) -> Commit:
        o = self.options
        tokens, conf = choose_tokens(out.logits, temperature=state.temperature, generator=state.generator,
                                     top_p=o.top_p)
        mask, scores = certainty_prior_commit(state, out.positions, conf, candidates,
                                              tokens_per_step=o.tokens_per_step, sigma=o.sigma,
                                              threshold=o.threshold)
        return Commit(positions=out.positions, tokens=tokens, confidence=scores, mask=mask, candidates=candidates)
