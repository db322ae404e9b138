"""Cache policy ``periodic``: a full refresh every ``period`` steps of a block, else the block only.

At the first step of every block (and every ``period`` steps after) every column is recomputed
and every cached K/V rewritten.  At the other steps only the current block's columns go through
the model (plus the column before the block for shifted-logit models such as Dream, whose
hidden row predicts the block's first token); they attend to the cached K/V of the prompt and
of the later, still masked, blocks.  This is Fast-dLLM's dual cache with a refresh period.

With ``period=1`` every step is a refresh, which is exactly cache ``"none"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dllm_core import CachePolicy, DecodeState, ForwardPlan, Options, check_range


@dataclass(frozen=True)
class PeriodicOptions(Options):
    """``period``: steps between full refreshes within a block (1 = always refresh = exact)."""

    period: int = 4

    def validate(self) -> None:
        check_range("period", self.period, 1)


class PeriodicCache(CachePolicy):
    """Refresh every ``period`` steps of a block; otherwise recompute only the block's columns."""

    description = "refresh every `period` steps of a block, else recompute the block only"
    Options = PeriodicOptions

    def on_block_start(self, state: DecodeState) -> None:
        # Built once per block, outside the step: plan() then allocates nothing and never syncs.
        first = state.block_start - 1 if state.shifted_logits else state.block_start
        cols = torch.arange(first, state.block_end, device=state.x.device)
        self._rows = cols.unsqueeze(0).repeat(state.batch_size, 1)

    def plan(self, state: DecodeState) -> ForwardPlan:
        if state.step_in_block % self.options.period == 0:  # Python ints: no host sync
            return ForwardPlan(rows=None)
        return ForwardPlan(rows=self._rows)
