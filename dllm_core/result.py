"""The result of a generation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StepTrace:
    """What one step did: the columns (relative to the generation start) committed per sequence."""

    step: int
    block: int
    rows_computed: int             #: rows through the model per sequence (T on a refresh)
    committed: list[list[int]]     #: per sequence, generated-region offsets committed this step


@dataclass
class GenerationResult:
    """Texts and token ids per prompt, plus cost counters and the resolved configuration."""

    texts: list[str]
    token_ids: list[list[int]]     #: generated ids per prompt, cut before the first stop id
    nfe: int                       #: diffusion-model forward calls
    steps: int                     #: denoising steps (== nfe for the built-in engine loop)
    seconds: float                 #: wall time of the generation
    generated_tokens: int          #: sum over prompts of tokens up to the first stop id
    config: dict[str, Any] = field(default_factory=dict)
    trace: list[StepTrace] | None = None
    timings: dict[str, float] = field(default_factory=dict)  #: seconds per phase (model, scheduler, ...)
    #: Counters components left in ``DecodeState.extras`` (e.g. the AR guide's forward calls), by component.
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The first prompt's text (convenient for single-prompt calls)."""
        return self.texts[0]

    @property
    def tokens_per_step(self) -> float:
        return self.generated_tokens / max(1, self.steps) / max(1, len(self.texts))

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["text"] = self.texts[0] if len(self.texts) == 1 else self.texts
        d["tokens_per_step"] = self.tokens_per_step
        d["tokens_per_second"] = self.tokens_per_second
        return d
