"""Hook specifications of dllm_core: the reference documentation for plugin authors.

Two kinds of hook exist.

*Registration hooks* (``dllm_register_*``) are called once when an engine (or a CLI run) builds
its registry.  Each receives a ``register`` callback::

    register(name: str, factory: type | str, *, description: str = "", aliases: Sequence[str] = ())

``factory`` is the component class (a subclass of :class:`dllm_core.CachePolicy`,
:class:`dllm_core.Scheduler`, :class:`dllm_core.Guide` or :class:`dllm_core.DiffusionLM`) or a
lazy ``"package.module:Class"`` string, imported only when the component is used.  Names are
lower-case and unique across all plugins; a clash is an error naming both plugins.

*Observer hooks* are called at generation and block boundaries, never per step or per layer,
so they may be slow (logging, metrics, streaming).  Their return values are ignored.

A plugin is a module or object with functions marked ``@dllm_core.hookimpl`` whose names are
the hook names below; it is found through the ``dllm_core`` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

PROJECT = "dllm_core"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .result import GenerationResult
    from .state import DecodeState

Register = Callable[..., None]


# -- registration -----------------------------------------------------------------------------

@hookspec
def dllm_register_caches(register: Register) -> None:
    """Register cache policies (subclasses of :class:`dllm_core.CachePolicy`).

    :param register: ``register(name, factory, *, description="", aliases=())``.

    Example::

        @hookimpl
        def dllm_register_caches(register):
            register("mycache", "my_pkg.cache:MyCache", description="recompute every other step")
    """


@hookspec
def dllm_register_schedulers(register: Register) -> None:
    """Register unmasking schedulers (subclasses of :class:`dllm_core.Scheduler`).

    :param register: ``register(name, factory, *, description="", aliases=())``.
    """


@hookspec
def dllm_register_guides(register: Register) -> None:
    """Register guide models that verify drafts (subclasses of :class:`dllm_core.Guide`).

    :param register: ``register(name, factory, *, description="", aliases=())``.
    """


@hookspec
def dllm_register_models(register: Register) -> None:
    """Register model families (subclasses of :class:`dllm_core.DiffusionLM`).

    A directory is loaded by the first family whose ``matches_config(config)`` is true.

    :param register: ``register(name, factory, *, description="", aliases=())``.
    """


# -- observers ---------------------------------------------------------------------------------

@hookspec
def dllm_generation_start(engine: "Engine", state: "DecodeState", config: dict[str, Any]) -> None:
    """Called before the first step of a generation.

    :param engine: the engine running it.
    :param state: the batch about to be decoded (do not modify).
    :param config: the resolved configuration (components, options, generation settings).
    """


@hookspec
def dllm_block_start(engine: "Engine", state: "DecodeState") -> None:
    """Called when a semi-autoregressive block starts (``state.block`` is its index)."""


@hookspec
def dllm_block_end(engine: "Engine", state: "DecodeState") -> None:
    """Called when every column of the block ``state.block`` is committed."""


@hookspec
def dllm_generation_end(engine: "Engine", result: "GenerationResult") -> None:
    """Called after a generation with its result (texts, NFE, timings, trace)."""
