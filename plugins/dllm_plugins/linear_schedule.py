"""LLaDA's fixed-count unmasking: schedulers ``low_confidence`` and ``random``.

LLaDA (``generate.py`` of GSAI-ML/LLaDA) splits the step budget evenly over the blocks
(``steps // num_blocks`` per block) and the block's masked tokens evenly over its steps: with
m masks and s steps every step commits ``m // s`` tokens and the first ``m % s`` steps one more.
Each step commits the masked columns of the current block with the highest confidence, where
confidence is the (untempered) probability of the chosen token (``low_confidence``) or a
uniform random number (``random``).  Tokens are the argmax, or a sample of
softmax(logits / temperature) when the temperature is positive (LLaDA's Gumbel trick).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dllm_core import Commit, DecodeState, ForwardOutput, Options, Scheduler, StrategyContext, check_range
from dllm_core.sampling import sample_plain_confidence, select_top


def linear_transfer_counts(masked_per_row: Tensor, steps: int) -> Tensor:
    """(B, steps) tokens to commit per step: ``m // steps`` each, the first ``m % steps`` steps one more."""
    base = masked_per_row // steps
    rem = masked_per_row % steps
    cols = torch.arange(steps, device=masked_per_row.device)
    return base.unsqueeze(1) + (cols.unsqueeze(0) < rem.unsqueeze(1)).long()


@dataclass(frozen=True)
class LinearOptions(Options):
    """``steps_per_block``: override the budget (default: the run's ``steps // num_blocks``)."""

    steps_per_block: int = 0

    def validate(self) -> None:
        check_range("steps_per_block", self.steps_per_block, 0)


class _LinearSchedule(Scheduler):
    Options = LinearOptions
    random_order = False

    def not_supported_reasons(self, ctx: StrategyContext) -> list[str]:
        n_blocks = -(-ctx.gen_length // ctx.block_length)
        if not self.options.steps_per_block and ctx.steps < n_blocks:
            return [f"steps ({ctx.steps}) must be at least the number of blocks ({n_blocks})"]
        return []

    def prepare(self, state: DecodeState, steps: int) -> None:
        self.steps_per_block = self.options.steps_per_block or max(1, steps // state.num_blocks)

    def on_block_start(self, state: DecodeState) -> None:
        masked = state.masked[:, state.block_start:state.block_end].sum(1)
        self.counts = linear_transfer_counts(masked, self.steps_per_block)

    def select(self, state: DecodeState, out: ForwardOutput, candidates: Tensor) -> Commit:
        tokens, conf = sample_plain_confidence(out.logits, temperature=state.temperature, generator=state.generator)
        if self.random_order:
            conf = torch.rand(tokens.shape, generator=state.generator, device=tokens.device)
        step = min(state.step_in_block, self.steps_per_block - 1)
        counts = self.counts[:, step].clamp_min(1)  # never stall if a cache skipped candidates earlier
        mask = select_top(conf, counts, candidates)
        return Commit(positions=out.positions, tokens=tokens, mask=mask, candidates=candidates,
                      confidence=torch.where(candidates, conf, torch.full_like(conf, float("-inf"))))


class LowConfidence(_LinearSchedule):
    """Commit the most confident masked tokens, a fixed number per step (LLaDA default)."""

    description = "LLaDA: fixed count per step (linear schedule), most confident first"


class RandomOrder(_LinearSchedule):
    """Commit random masked tokens, a fixed number per step (LLaDA ``remasking='random'``)."""

    description = "LLaDA: fixed count per step (linear schedule), random order"
    random_order = True
