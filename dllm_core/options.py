"""Frozen, validated option dataclasses for plugin components.

Every cache policy, scheduler and guide declares its options as a nested frozen dataclass
deriving from :class:`Options`.  Options are built from plain mappings (Python keyword
arguments, JSON, or ``key=value`` strings from the command line); unknown keys are errors,
values are coerced to the declared field type, and :meth:`Options.validate` checks ranges.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import OptionError

T = TypeVar("T", bound="Options")


@dataclasses.dataclass(frozen=True)
class Options:
    """Base class of component options.  Subclasses are ``@dataclass(frozen=True)``."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`OptionError` naming the option and its allowed range when a value is bad."""

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any] | None = None, *, owner: str = "") -> T:
        """Build options from a mapping; unknown keys and uncoercible values raise :class:`OptionError`."""
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        who = f"{owner}: " if owner else ""
        if unknown:
            allowed = ", ".join(sorted(fields)) or "(none)"
            raise OptionError(f"{who}unknown option(s) {', '.join(unknown)}; allowed: {allowed}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(v, hints.get(k, Any), f"{who}option {k!r}") for k, v in data.items()}
        try:
            return cls(**kwargs)
        except OptionError as exc:
            if owner and not str(exc).startswith(owner):
                raise OptionError(f"{who}{exc}") from None
            raise

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable mapping of every option (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, what: str) -> Any:
    """Coerce ``value`` (possibly a CLI string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None or (isinstance(value, str) and value.lower() == "none" and type(None) in args):
            if type(None) in args:
                return None
        last: Exception | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, what)
            except OptionError as exc:
                last = exc
        raise last or OptionError(f"{what}: cannot use {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise OptionError(f"{what} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise OptionError(f"{what} expects {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def check_range(name: str, value: float | int, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False) -> None:
    """Raise :class:`OptionError` unless ``low <= value <= high`` (open ends where asked)."""
    bad = (low is not None and (value < low or (low_open and value == low))) or (
        high is not None and (value > high or (high_open and value == high)))
    if bad:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        lb = "(" if low_open or low is None else "["
        hb = ")" if high_open or high is None else "]"
        raise OptionError(f"option {name!r} must be in {lb}{lo}, {hi}{hb}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class NoOptions(Options):
    """Options of a component that takes none."""
