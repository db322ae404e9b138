"""Scheduler ``left_to_right``: commit the leftmost ``n`` masked columns of the block each step.

Decoding then proceeds like an autoregressive model (``n=1``) or in chunks of ``n`` tokens, no
matter how confident the model is.  Tokens are the argmax at temperature 0, otherwise a sample
of softmax(logits / temperature) drawn from the state's seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dllm_core import Commit, DecodeState, ForwardOutput, Options, Scheduler, check_range
from dllm_core.sampling import choose_tokens, select_top


@dataclass(frozen=True)
class LeftToRightOptions(Options):
    """``n``: columns committed per step and sequence (fewer when fewer are masked)."""

    n: int = 1

    def validate(self) -> None:
        check_range("n", self.n, 1)


class LeftToRight(Scheduler):
    """Commit the ``n`` leftmost candidates of every sequence, each step."""

    description = "commit the leftmost n masked columns of the block per step"
    Options = LeftToRightOptions

    def prepare(self, state: DecodeState, steps: int) -> None:
        self._counts = torch.full((state.batch_size,), self.options.n, dtype=torch.long, device=state.x.device)

    def select(self, state: DecodeState, out: ForwardOutput, candidates: Tensor) -> Commit:
        tokens, conf = choose_tokens(out.logits, temperature=state.temperature, generator=state.generator)
        leftmost_first = -out.positions.float()  # higher score = further left
        mask = select_top(leftmost_first, self._counts, candidates)
        confidence = torch.where(candidates, conf, torch.full_like(conf, float("-inf")))
        return Commit(positions=out.positions, tokens=tokens, confidence=confidence, mask=mask,
                      candidates=candidates)
