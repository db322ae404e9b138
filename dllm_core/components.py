"""The three kinds of pluggable component: cache policies, schedulers and guides.

Each is a small class with an explicit lifecycle.  The engine calls them directly (never
through a pluggy hook) once per step:

1. ``cache.plan(state) -> ForwardPlan``             which rows to recompute
2. ``model.forward(...) -> ForwardOutput``          partial forward
3. ``scheduler.select(state, out) -> Commit``       which masked columns get which tokens
4. ``guide.verify(state, commit) -> Commit``        optional: trim the commit set
5. ``cache.observe(state, plan, out, commit)``      learn from what changed

Components must not call ``.item()`` or loop over batch rows in Python on the per-step path
where they can avoid it (the step should be capturable in a CUDA graph).  When
``DecodeState.cuda_graphs`` is set, a component may replay its own per-step tensor work from
CUDA graphs with :class:`dllm_core.GraphedFunction` (eager otherwise).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .options import NoOptions, Options
from .state import Commit, DecodeState, ForwardOutput, ForwardPlan

if TYPE_CHECKING:  # pragma: no cover
    from .models.base import DiffusionLM


@dataclass(frozen=True)
class StrategyContext:
    """What a component may inspect to decide whether it can run (see ``not_supported_reasons``)."""

    model_family: str
    shifted_logits: bool
    batch_size: int
    gen_length: int
    block_length: int
    steps: int
    temperature: float
    cache: "CachePolicy"
    scheduler: "Scheduler"
    guide: "Guide | None"
    vocab_size: int = 0
    tokenizer: Any = None
    cuda_graphs: bool = False  #: the engine replays CUDA graphs (see ``DecodeState.cuda_graphs``)

    @property
    def uses_blocks(self) -> bool:
        return self.block_length < self.gen_length


class Component(ABC):
    """Common base: a name (set by the registry), options, and compatibility reasons."""

    kind: ClassVar[str] = ""
    #: Registry name; filled in by :func:`dllm_core.registry.Registry.register` when missing.
    name: ClassVar[str] = ""
    #: One line shown by ``dllm-run plugins``.
    description: ClassVar[str] = ""
    #: The frozen options dataclass of this component.
    Options: ClassVar[type[Options]] = NoOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            # Unregistered classes still get a readable name in errors; registration overrides it.
            cls.name = cls.__name__

    def __init__(self, options: Options | None = None, **kwargs: Any) -> None:
        if options is not None and kwargs:
            raise TypeError("pass either an Options object or keyword options, not both")
        if options is None:
            options = self.Options.from_dict(kwargs, owner=f"{self.kind} {self.name!r}")
        elif not isinstance(options, self.Options):
            raise TypeError(f"{self.kind} {self.name!r} expects {self.Options.__name__}, got {type(options).__name__}")
        self.options = options

    def not_supported_reasons(self, ctx: StrategyContext) -> list[str]:
        """Reasons this component cannot run in ``ctx`` (empty when it can)."""
        return []

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description (name + options) from which the component can be rebuilt."""
        return {"name": self.name, "options": self.options.to_dict()}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.to_dict().items())
        return f"{type(self).__name__}({opts})"


class CachePolicy(Component):
    """Decides which rows the model recomputes each step; all other rows reuse cached K/V.

    Every policy must have a configuration in which it equals full recomputation exactly.
    """

    kind = "cache"
    #: True when the policy reads ``ForwardOutput.attention`` (the model then returns it when
    #: ``plan.need_attention`` is set).
    uses_attention: ClassVar[bool] = False

    def prepare(self, state: DecodeState) -> None:
        """Called once per generation, before the first step."""

    def on_block_start(self, state: DecodeState) -> None:
        """Called when a semi-autoregressive block starts (also for the first block)."""

    @abstractmethod
    def plan(self, state: DecodeState) -> ForwardPlan:
        """The rows to recompute in the coming step."""

    def observe(self, state: DecodeState, plan: ForwardPlan, out: ForwardOutput, commit: Commit) -> None:
        """Called after each step with what was computed and committed."""

    def on_block_end(self, state: DecodeState) -> None:
        """Called when every column of the current block is committed."""


class Scheduler(Component):
    """Turns the model's predictions into commits: which masked columns get which tokens."""

    kind = "scheduler"

    def prepare(self, state: DecodeState, steps: int) -> None:
        """Called once per generation; ``steps`` is the requested total step budget."""

    def on_block_start(self, state: DecodeState) -> None:
        """Called when a block starts."""

    @abstractmethod
    def select(self, state: DecodeState, out: ForwardOutput, candidates: "Any") -> Commit:
        """Choose commits among ``candidates`` ((B, r) bool over ``out.positions``).

        Should commit at least one candidate per sequence that has any; a schedule may commit
        none at some steps (Dream's early timesteps do), and the engine stops a block that makes
        no progress for too long with an error naming the scheduler and the cache policy.
        """


class Guide(Component):
    """Verifies a scheduler's drafts (e.g. with an autoregressive model) and trims the commits."""

    kind = "guide"
    #: When True the engine fills every column after a committed EOS with EOS and stops that row.
    fills_after_eos: ClassVar[bool] = True

    def prepare(self, state: DecodeState, model: "DiffusionLM", tokenizer: Any) -> None:
        """Called once per generation."""

    @abstractmethod
    def verify(self, state: DecodeState, commit: Commit) -> Commit:
        """Return the commit with ``mask`` replaced by the accepted drafts (at least one per row)."""
