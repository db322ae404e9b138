"""Cache policy ``freecache``: FreeCache of FlashDLM (Hu, Meng et al., arXiv 2505.21467).

FreeCache keeps every column's K/V in a preallocated cache and, after a full forward at step 0,
recomputes only a window around the decoding frontier; everything left of the window is frozen
(its K/V come from the last step it was inside the window) and masked columns right of the
window are neither computed nor attended (``src/model/dream_flash`` of
ZhanqiuHu/flash-dlm-experimental).  Two modes:

* ``window`` (Dream's sliding window): with F the first masked column and ``last = F - 1`` the
  last committed column before it, each step recomputes ``[ws, we)`` at its true positions, with
  ``ws = max(0, last - left)`` and ``we = min(T, F + right)`` (``right = 0``: to the end), and
  attends to the columns ``< we`` (``ForwardPlan.kv_limit``).  Predictions are wanted for the
  current block's columns in ``[F, we)``.  ``last`` is inside the window, so the row that
  predicts F for shifted-logit models is always recomputed.
* ``block`` (the LLaDA variant, ``generate_block_cached``): each step recomputes
  ``[block_start, T)``; there is no refresh at block starts, so a finished block keeps the K/V of
  its last denoising step (Fast-dLLM instead refreshes at the next block start).  LLaDA only:
  for shifted-logit models the block's first column has no recomputed predecessor row.
* ``auto`` (default): ``window`` when ``left`` and ``right`` cover the whole sequence (then it
  is full recomputation, the exact configuration), else ``block`` for non-shifted models
  decoding in blocks, else ``window``.

Defaults ``left = right = 256`` are the repo's evaluation configuration; its API uses
``left = 64`` with the window reaching the end (here ``right = 0``).

In a batch every sequence recomputes the same columns: F is the minimum over the batch of each
sequence's first masked column, so sequences that are further ahead recompute a little more.
Finding F costs one host synchronisation per step (the window is a shape).  Upstream writes
the window's K/V at the previous step's offset while reading the input at the current window
start, which agree only when the window did not move (algorithms.md §3.3); here the window is
always recomputed at its true positions and that pointer bookkeeping is not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dllm_core import CachePolicy, DecodeState, ForwardPlan, Options, StrategyContext, check_range


@dataclass(frozen=True)
class FreeCacheOptions(Options):
    """``left``: committed columns kept in the window left of the frontier; ``right``: columns
    from the frontier on (0 = to the end); ``mode``: ``"auto"``, ``"window"`` or ``"block"``."""

    left: int = 256
    right: int = 256
    mode: Literal["auto", "window", "block"] = "auto"

    def validate(self) -> None:
        check_range("left", self.left, 0)
        check_range("right", self.right, 0)


def _columns(state: DecodeState, start: int, end: int) -> Tensor:
    cols = torch.arange(start, end, device=state.x.device)
    return cols.unsqueeze(0).expand(state.batch_size, -1)


class FreeCache(CachePolicy):
    """FreeCache: recompute a window around the frontier (or the block and its suffix); freeze the rest."""

    name = "freecache"
    description = "FreeCache (FlashDLM): recompute a window around the frontier, freeze the prefix"
    Options = FreeCacheOptions

    def not_supported_reasons(self, ctx: StrategyContext) -> list[str]:
        if self.options.mode == "block" and ctx.shifted_logits:
            return ["mode 'block' is FreeCache's LLaDA variant and needs non-shifted logits; "
                    f"use mode 'window' or 'auto' for {ctx.model_family}"]
        return []

    def _covers_everything(self, length: int) -> bool:
        return self.options.left >= length and (self.options.right == 0 or self.options.right >= length)

    def prepare(self, state: DecodeState) -> None:
        mode = self.options.mode
        if mode == "auto":
            blocks = state.block_length < state.gen_length
            use_block = blocks and not state.shifted_logits and not self._covers_everything(state.length)
            mode = "block" if use_block else "window"
        self.mode = mode

    def window(self, state: DecodeState) -> tuple[int, int, int]:
        """``(frontier, ws, we)`` of the coming step (frontier: first masked column, min over the batch)."""
        T = state.length
        masked = state.masked.clone()
        masked[:, :state.gen_start] = False
        first = torch.where(masked.any(1), masked.long().argmax(1), torch.full_like(masked[:, 0], T, dtype=torch.long))
        frontier = int(first.min())  # the one host sync of the step: the window is a shape
        o = self.options
        ws = max(0, frontier - 1 - o.left)
        we = T if o.right == 0 else min(T, frontier + o.right)
        return frontier, ws, we

    def plan(self, state: DecodeState) -> ForwardPlan:
        first_step = state.step == 0
        if self.mode == "block":
            if first_step:
                return ForwardPlan(rows=None)
            return ForwardPlan(rows=_columns(state, state.block_start, state.length))
        frontier, ws, we = self.window(state)
        lo, hi = max(state.block_start, frontier), min(state.block_end, we)
        logits = _columns(state, lo, hi)
        if first_step:  # the cache is empty: everything is computed (and attended) once
            return ForwardPlan(rows=None, logit_positions=logits)
        return ForwardPlan(rows=_columns(state, ws, we), logit_positions=logits,
                           kv_limit=None if we == state.length else we)
