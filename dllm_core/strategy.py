"""A resolved strategy: one cache policy, one scheduler, an optional guide, checked together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .components import CachePolicy, Guide, Scheduler, StrategyContext
from .errors import IncompatibleStrategyError


@dataclass
class Strategy:
    """The components of one engine; the engine calls them directly in its step loop."""

    cache: CachePolicy
    scheduler: Scheduler
    guide: Guide | None = None

    def __post_init__(self) -> None:
        for comp, cls in ((self.cache, CachePolicy), (self.scheduler, Scheduler)):
            if not isinstance(comp, cls):
                raise TypeError(f"expected a {cls.__name__}, got {type(comp).__name__}")
        if self.guide is not None and not isinstance(self.guide, Guide):
            raise TypeError(f"expected a Guide, got {type(self.guide).__name__}")

    def components(self) -> list[Any]:
        return [c for c in (self.cache, self.scheduler, self.guide) if c is not None]

    def check(self, ctx: StrategyContext) -> None:
        """Raise one :class:`IncompatibleStrategyError` naming every objecting component and why."""
        problems = []
        for comp in self.components():
            for reason in comp.not_supported_reasons(ctx):
                problems.append(f"  - {comp.kind} {comp.name!r}: {reason}")
        if problems:
            names = ", ".join(f"{c.kind} {c.name!r}" for c in self.components())
            raise IncompatibleStrategyError(f"these components cannot run together ({names}):\n" + "\n".join(problems))

    def config(self) -> dict[str, Any]:
        return {"cache": self.cache.config(), "scheduler": self.scheduler.config(),
                "guide": self.guide.config() if self.guide is not None else None}
