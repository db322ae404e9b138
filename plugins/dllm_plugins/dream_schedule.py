"""Dream's confidence-ranked unmasking: schedulers ``maskgit_plus``, ``topk_margin``, ``entropy``.

Dream (``generation_utils.py`` of Dream-org/Dream) walks timesteps t_i = linspace(1, eps, s + 1)
and at step i (i < s - 1) commits ``int(m * (1 - t_{i+1} / t_i))`` of the m masked tokens, all
remaining ones at the last step; this may be zero at early steps, as upstream.  Tokens come from
softmax(logits / temperature) after optional top-p / top-k filtering (argmax when greedy) and
are ranked by a confidence: the chosen token's probability (``maskgit_plus``), the top-1 minus
top-2 margin (``topk_margin``) or the negative entropy (``entropy``).  With ``alg_temp > 0`` the
committed columns are sampled from softmax(confidence / alg_temp) instead of taking the top ones.
Here the schedule runs per block, over the block's masks and ``steps // num_blocks`` steps;
with one block it is Dream's own schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dllm_core import Commit, DecodeState, ForwardOutput, Options, Scheduler, check_range
from dllm_core.sampling import choose_tokens, select_top


@dataclass(frozen=True)
class DreamOptions(Options):
    top_p: float = 1.0
    top_k: int = 0
    alg_temp: float = 0.0
    eps: float = 1e-3

    def validate(self) -> None:
        check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        check_range("top_k", self.top_k, 0)
        check_range("alg_temp", self.alg_temp, 0.0)
        check_range("eps", self.eps, 0.0, 1.0, low_open=True, high_open=True)


def dream_transfer_count(masked: Tensor, step: int, steps: int, eps: float) -> Tensor:
    """(B,) tokens to commit at ``step`` of ``steps`` given ``masked`` (B,) masks left."""
    if step >= steps - 1:
        return masked
    t = 1.0 - (1.0 - eps) * step / steps
    s = 1.0 - (1.0 - eps) * (step + 1) / steps
    return (masked.double() * (1.0 - s / t)).long()


class _DreamSchedule(Scheduler):
    Options = DreamOptions
    confidence_kind = "max_prob"

    def prepare(self, state: DecodeState, steps: int) -> None:
        self.steps_per_block = max(1, steps // state.num_blocks)

    def select(self, state: DecodeState, out: ForwardOutput, candidates: Tensor) -> Commit:
        o = self.options
        tokens, conf = choose_tokens(out.logits, temperature=state.temperature, generator=state.generator,
                                     top_p=o.top_p, top_k=o.top_k or None, confidence=self.confidence_kind)
        masked = state.masked[:, state.block_start:state.block_end].sum(1)
        counts = dream_transfer_count(masked, state.step_in_block, self.steps_per_block, o.eps)
        scores = torch.where(candidates, conf, torch.full_like(conf, float("-inf")))
        if o.alg_temp > 0:
            # sampling without replacement = ordering by a Gumbel race over log-softmax(conf / alg_temp)
            u = torch.rand(scores.shape, generator=state.generator, device=scores.device)
            rank_scores = scores / o.alg_temp - torch.log(-torch.log(u.clamp_min(1e-20)))
        else:
            rank_scores = scores
        mask = select_top(rank_scores, counts, candidates)
        return Commit(positions=out.positions, tokens=tokens, confidence=scores, mask=mask, candidates=candidates)


class MaskGitPlus(_DreamSchedule):
    """Dream ``alg='maskgit_plus'``: rank by the chosen token's probability."""

    description = "Dream: timestep schedule, rank by max probability"


class TopKMargin(_DreamSchedule):
    """Dream ``alg='topk_margin'``: rank by top-1 minus top-2 probability."""

    description = "Dream: timestep schedule, rank by top-1 - top-2 margin"
    confidence_kind = "margin"


class Entropy(_DreamSchedule):
    """Dream ``alg='entropy'``: rank by negative entropy."""

    description = "Dream: timestep schedule, rank by negative entropy"
    confidence_kind = "neg_entropy"
