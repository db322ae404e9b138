"""Scheduler ``factor``: Fast-dLLM's factor-based parallel decoding rule.

Sort the candidates' confidences in descending order, c_(1) >= c_(2) >= ...; commit the longest
leading run of n candidates that all satisfy (n + 1)(1 - c_(n)) <= ``factor``, i.e.
c_(n) >= 1 - factor / (n + 1), where c_(1) is always accepted
(``get_transfer_index_dynamic`` of Fast-dLLM's newer ``llada/generate.py``).

Upstream quirk, reproduced on purpose: its loop breaks at the first failing index i (0-based) and
then adds one to the count when i is the last index, a branch meant for "no failure".  So when
the first failure is at the *last* candidate, that candidate is committed too (all of them).
Example with 3 candidates and factor 1: c = (0.99, 0.9, 0.5): index 1 passes (0.9 >= 2/3),
index 2 fails (0.5 < 3/4) and is the last, so all 3 are committed; with 4 candidates
c = (0.99, 0.9, 0.5, 0.4) only the first 2 are.

Tokens and confidence as in :mod:`.threshold` (float32 max-probability; upstream float64).  The
thresholds 1 - factor / (n + 1) are computed in float64 and compared with the float32 confidences.
Vectorised over the batch: one sort, no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dllm_core import Commit, DecodeState, ForwardOutput, Options, Scheduler, check_range
from dllm_core.sampling import select_top

from .threshold import draft_tokens


def factor_counts(scores: Tensor, candidates: Tensor, factor: float) -> Tensor:
    """(B,) long: how many of the most confident candidates the factor rule commits per row.

    ``scores`` (B, r) are the confidences, -inf off candidates.
    """
    B, r = scores.shape
    ordered = torch.sort(scores.to(torch.float64), dim=-1, descending=True).values
    n_cand = candidates.sum(-1)
    idx = torch.arange(r, device=scores.device)
    # the n-th candidate (n = idx + 1) needs c >= 1 - factor / (n + 1); the first always passes
    need = 1.0 - factor / (idx.to(torch.float64) + 2.0)
    need[0] = float("-inf")
    fail = (ordered < need) & (idx.unsqueeze(0) < n_cand.unsqueeze(1))
    first_fail = torch.where(fail.any(-1), fail.long().argmax(-1), n_cand)
    # the quirk: a first failure at the last candidate commits it as well
    return torch.where(first_fail >= n_cand - 1, n_cand, first_fail)


@dataclass(frozen=True)
class FactorOptions(Options):
    """``factor``: f in (n + 1)(1 - c_(n)) <= f; larger commits more per step."""

    factor: float = 1.0

    def validate(self) -> None:
        check_range("factor", self.factor, 0.0)


class Factor(Scheduler):
    """Commit the largest leading n with (n + 1)(1 - c_(n)) <= factor (at least one)."""

    name = "factor"
    description = "Fast-dLLM: commit the largest n with (n + 1)(1 - c_(n)) <= factor"
    Options = FactorOptions

    def select(self, state: DecodeState, out: ForwardOutput, candidates: Tensor) -> Commit:
        tokens, conf = draft_tokens(state, out.logits)
        scores = torch.where(candidates, conf, torch.full_like(conf, float("-inf")))
        mask = select_top(scores, factor_counts(scores, candidates, self.options.factor), candidates)
        return Commit(positions=out.positions, tokens=tokens, confidence=scores, mask=mask, candidates=candidates)
