"""Cache policies ``prefix`` and ``dual``: Fast-dLLM's block-wise approximate KV caches.

Fast-dLLM (arXiv 2505.22618, ``llada/generate.py`` and ``dream/model/generation_utils_block.py``
of NVlabs/Fast-dLLM) decodes in semi-autoregressive blocks.  The first step of every block is a
full forward that rewrites every column's K/V (and decodes, so it costs nothing extra over
no-cache decoding).  The remaining steps of the block recompute only some columns against that
cache:

* ``prefix`` (PrefixCache): the columns ``[block_start, T)``, i.e. the block and every masked
  column after it, attending to the cached prefix ``[0, block_start)``;
* ``dual`` (DualCache): only the block's columns; their fresh K/V are written back into the
  cache every step, while the prefix *and* the suffix after the block stay as the refresh left them.

``refresh_every = k > 0`` adds a full refresh at every k-th step of a block; ``k = 1`` refreshes
at every step, which is full recomputation (the exact configuration).

Shifted-logit models (Dream) predict column c from hidden row c - 1, and the row before the
block is not recomputed in the cached steps.  As Fast-dLLM's Dream code does, the block-start
refresh therefore predicts only the block's first column (any scheduler commits it, being the
only candidate), and the cached steps predict ``[block_start + 1, block_end)`` from the block's
own rows.  A scheduler may commit nothing at a step (Dream's timestep schedules do early on); if
the first column is still masked after the refresh, the cached steps of that block also
recompute the row before the block and predict the whole block, so decoding cannot stall.
Upstream forces that commit instead, which a cache policy cannot do.

Keys are cached after RoPE by the model (upstream keeps them before RoPE and re-rotates every
key of every layer at every step); the K/V values are the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dllm_core import CachePolicy, Commit, DecodeState, ForwardOutput, ForwardPlan, Options, check_range


@dataclass(frozen=True)
class FastDllmCacheOptions(Options):
    """``refresh_every``: 0 = refresh only at block starts (Fast-dLLM); k > 0 = also at every k-th
    step of a block; 1 = every step (equals full recomputation)."""

    refresh_every: int = 0

    def validate(self) -> None:
        check_range("refresh_every", self.refresh_every, 0)


def _columns(state: DecodeState, start: int, end: int) -> Tensor:
    """(B, end - start) long: the columns ``[start, end)`` for every sequence."""
    cols = torch.arange(start, end, device=state.x.device)
    return cols.unsqueeze(0).expand(state.batch_size, -1)


class _BlockRefreshCache(CachePolicy):
    """Shared by ``prefix`` and ``dual``: the refresh schedule and the Dream first-column rule.

    Subclasses say only where the recomputed rows of a cached step end (``_rows_end``).
    """

    Options = FastDllmCacheOptions

    def prepare(self, state: DecodeState) -> None:
        # Dream only: True while the block's first column was not decoded by the block-start refresh.
        self._first_pending = False

    def _rows_end(self, state: DecodeState) -> int:
        raise NotImplementedError

    def _is_refresh(self, state: DecodeState) -> bool:
        k, s = self.options.refresh_every, state.step_in_block
        return s == 0 or (k > 0 and s % k == 0)

    def plan(self, state: DecodeState) -> ForwardPlan:
        bs, be = state.block_start, state.block_end
        if self._is_refresh(state):
            if state.shifted_logits and state.step_in_block == 0 and self.options.refresh_every != 1:
                # Decode the first column now: no cached step has the row that predicts it.
                return ForwardPlan(rows=None, logit_positions=_columns(state, bs, bs + 1))
            return ForwardPlan(rows=None)  # predictions for the whole block (the default)
        end = self._rows_end(state)
        if not state.shifted_logits:
            return ForwardPlan(rows=_columns(state, bs, end))
        if self._first_pending:  # also recompute the predecessor row of the first column
            return ForwardPlan(rows=_columns(state, bs - 1, end), logit_positions=_columns(state, bs, be))
        return ForwardPlan(rows=_columns(state, bs, end), logit_positions=_columns(state, bs + 1, be))

    def observe(self, state: DecodeState, plan: ForwardPlan, out: ForwardOutput, commit: Commit) -> None:
        if state.shifted_logits and state.step_in_block == 0 and plan.is_refresh:
            # One host sync per block (Dream only): did the refresh decode the first column?
            self._first_pending = bool(state.masked[:, state.block_start].any())


class PrefixCache(_BlockRefreshCache):
    """Fast-dLLM PrefixCache: after the block-start refresh, recompute ``[block_start, T)``."""

    name = "prefix"
    description = "Fast-dLLM PrefixCache: refresh at block start, then recompute the block and its suffix"

    def _rows_end(self, state: DecodeState) -> int:
        return state.length


class DualCache(_BlockRefreshCache):
    """Fast-dLLM DualCache: after the block-start refresh, recompute only the block's columns."""

    name = "dual"
    description = "Fast-dLLM DualCache: refresh at block start, then recompute only the block"

    def _rows_end(self, state: DecodeState) -> int:
        return state.block_end
