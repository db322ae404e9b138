"""The data that flows through one denoising step.

``DecodeState`` is the batch being decoded; ``ForwardPlan`` is what a cache policy asks the
model to compute; ``ForwardOutput`` is what the model returns; ``Commit`` is what a scheduler
(and optionally a guide) decides.  ``Commit`` is the seam between schedulers and cache policies:
policies observe it to plan the next step.

Conventions: every sequence of a batch is left-padded so that the generation region
``[gen_start, gen_start + gen_length)`` is at the same columns for all rows; ``positions`` are
RoPE positions (0 at each sequence's first real token), so padding never shifts a sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class DecodeState:
    """Mutable state of a batch under generation (tensors on the model's device)."""

    x: Tensor                 #: (B, T) token ids; ``mask_id`` where still masked
    valid: Tensor             #: (B, T) bool, False on left padding
    positions: Tensor         #: (B, T) long RoPE positions
    gen_start: int            #: first generated column (same for every row)
    gen_length: int
    block_length: int
    mask_id: int
    eos_id: int
    shifted_logits: bool      #: Dream-style: token i is predicted from hidden row i-1
    temperature: float = 0.0
    generator: torch.Generator | None = None
    step: int = 0             #: steps taken so far in this generation
    block: int = 0            #: index of the current block
    step_in_block: int = 0    #: steps taken so far in the current block
    last_commit: Tensor | None = None  #: (B, T) bool, positions committed by the previous step
    #: the engine replays CUDA graphs (``Engine(cuda_graphs=True)``); components may then capture
    #: their own per-step work too (:class:`dllm_core.graphed_function.GraphedFunction`)
    cuda_graphs: bool = False
    extras: dict = field(default_factory=dict)  #: free space for components (keyed by their name)

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def length(self) -> int:
        return self.x.shape[1]

    @property
    def num_blocks(self) -> int:
        return -(-self.gen_length // self.block_length)

    @property
    def block_start(self) -> int:
        return self.gen_start + self.block * self.block_length

    @property
    def block_end(self) -> int:
        return min(self.gen_start + (self.block + 1) * self.block_length, self.gen_start + self.gen_length)

    @property
    def masked(self) -> Tensor:
        """(B, T) bool: positions still masked."""
        return self.x == self.mask_id

    def block_positions(self) -> Tensor:
        """(B, block) long: the columns of the current block, the same for every row."""
        cols = torch.arange(self.block_start, self.block_end, device=self.x.device)
        return cols.unsqueeze(0).expand(self.batch_size, -1)


@dataclass
class ForwardPlan:
    """What a cache policy asks the model to compute in one step.

    ``rows is None`` is a *refresh*: every row is recomputed and every cached K/V rewritten.
    Otherwise ``rows`` (B, q) lists, per sequence, the columns recomputed this step (the same
    count q for every sequence; order is free, duplicates are not allowed).  Their fresh K/V are
    written into the cache and they attend to all cached columns ``< kv_limit``.
    ``logit_positions`` (B, r) are the columns whose token predictions are wanted; ``None``
    means the current block.  The hidden rows that predict them (the same columns, or the
    columns before them for shifted-logit models) must be among ``rows``.
    """

    rows: Tensor | None = None
    logit_positions: Tensor | None = None
    kv_limit: int | None = None
    need_attention: bool = False

    @property
    def is_refresh(self) -> bool:
        return self.rows is None


@dataclass
class ForwardOutput:
    """What a partial forward returns."""

    #: (B, r, V) predictions for ``positions`` in the model's dtype (bfloat16 for the released
    #: checkpoints; upcast to float32 before computing distributions, as :mod:`dllm_core.sampling`
    #: does).  In the engine the mask id's logit is -inf.
    logits: Tensor
    positions: Tensor         #: (B, r) the predicted columns
    rows: Tensor              #: (B, q) the recomputed columns (all columns after a refresh)
    attention: list[Tensor] | None = None  #: per layer (B, q, T) head-averaged probabilities


@dataclass
class Commit:
    """A scheduler's decision for one step (a guide may trim ``mask``).

    ``tokens`` holds the draft token for every candidate position, committed or not, so a guide
    can verify drafts beyond the scheduler's own choice.
    """

    positions: Tensor         #: (B, r) columns considered
    tokens: Tensor            #: (B, r) draft token at each column
    confidence: Tensor        #: (B, r) the scheduler's score; -inf where not a candidate
    mask: Tensor              #: (B, r) bool: commit these this step
    candidates: Tensor        #: (B, r) bool: masked columns inside the current block

    def committed_columns(self, length: int) -> Tensor:
        """(B, length) bool map of the columns committed by this step."""
        out = torch.zeros(self.positions.shape[0], length, dtype=torch.bool, device=self.positions.device)
        return out.scatter_(1, self.positions, self.mask)
