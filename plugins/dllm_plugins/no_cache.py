"""Cache policy ``none``: recompute every row at every step (the exact reference)."""

from __future__ import annotations

from dllm_core import CachePolicy, DecodeState, ForwardPlan


class NoCache(CachePolicy):
    """Full recomputation every step; every other policy must equal it in its exact configuration."""

    description = "full recomputation every step (no KV reuse)"

    def plan(self, state: DecodeState) -> ForwardPlan:
        return ForwardPlan(rows=None)
