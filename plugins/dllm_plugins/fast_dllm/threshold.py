"""Scheduler ``threshold``: Fast-dLLM's confidence-aware parallel decoding.

Each step commits every candidate (masked column of the current block) whose confidence is at
least ``threshold``, and always the most confident candidate, so every step makes progress
(``get_transfer_index`` of Fast-dLLM's ``llada/generate.py``; Dream's ``confidence_threshold``).
Fast-dLLM's Theorem 1: when every committed marginal exceeds 1 - eps with (n + 1) eps <= 1, greedy
parallel decoding of n tokens equals greedy joint decoding.  ``threshold > 1`` commits exactly
one token per step (the most confident), i.e. LLaDA's low-confidence remasking at one token/step.

Confidence is the probability of the chosen token, from a float32 softmax (upstream: float64 for
LLaDA).  Tokens are the argmax, or at a positive temperature a sample; the confidence is then
taken from the untempered softmax for LLaDA (as its ``generate.py`` does) and from the tempered
one for shifted-logit models (Dream's ``sample_tokens``).  Ties of the top-1 go to the lower
column (upstream: whatever ``torch.topk`` returns).  Fully vectorised: no loop over the batch and
no host synchronisation (upstream loops over rows with ``.item()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dllm_core import Commit, DecodeState, ForwardOutput, Options, Scheduler, check_range
from dllm_core.sampling import choose_tokens, sample_plain_confidence, select_top


def draft_tokens(state: DecodeState, logits: Tensor) -> tuple[Tensor, Tensor]:
    """(tokens, confidence) per predicted column, both (B, r); confidence in float32.

    Greedy at temperature 0; otherwise Dream (shifted logits) samples and scores with the
    tempered distribution, LLaDA samples with the Gumbel trick and scores with the plain softmax.
    """
    if state.shifted_logits:
        return choose_tokens(logits, temperature=state.temperature, generator=state.generator)
    return sample_plain_confidence(logits, temperature=state.temperature, generator=state.generator)


def top_one(scores: Tensor, candidates: Tensor) -> Tensor:
    """(B, r) bool: the most confident candidate of each row that has one (ties: lower index)."""
    ones = torch.ones(scores.shape[0], dtype=torch.long, device=scores.device)
    return select_top(scores, ones, candidates)


@dataclass(frozen=True)
class ThresholdOptions(Options):
    """``threshold``: commit candidates with confidence >= this (tau; > 1 means one per step)."""

    threshold: float = 0.9

    def validate(self) -> None:
        check_range("threshold", self.threshold, 0.0)


class Threshold(Scheduler):
    """Commit every candidate with confidence >= ``threshold``, and at least the most confident."""

    name = "threshold"
    description = "Fast-dLLM: commit every candidate with confidence >= threshold (at least the top one)"
    Options = ThresholdOptions

    def select(self, state: DecodeState, out: ForwardOutput, candidates: Tensor) -> Commit:
        tokens, conf = draft_tokens(state, out.logits)
        scores = torch.where(candidates, conf, torch.full_like(conf, float("-inf")))
        mask = candidates & ((conf >= self.options.threshold) | top_one(scores, candidates))
        return Commit(positions=out.positions, tokens=tokens, confidence=scores, mask=mask, candidates=candidates)
