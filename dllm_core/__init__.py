"""dllm_core: fast, faithful inference for diffusion language models.

Public API::

    from dllm_core import Engine
    engine = Engine("GSAI-ML/LLaDA-8B-Instruct", cache="dual", scheduler="threshold")
    print(engine.generate("What is 7 * 6?", gen_length=64, block_length=32).text)

Plugin authors subclass :class:`CachePolicy`, :class:`Scheduler` or :class:`Guide` and register
them from a ``@hookimpl`` (see :mod:`dllm_core.hookspecs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Names are imported lazily (PEP 562) so that importing the package, e.g. for its pytest plugin
# or ``dllm_core.hookimpl`` in a plugin module, does not pay for torch until something needs it.
_EXPORTS = {
    "components": ("CachePolicy", "Component", "Guide", "Scheduler", "StrategyContext"),
    "engine": ("Engine",),
    "errors": ("DllmError", "IncompatibleStrategyError", "ModelFilesError", "OptionError", "PluginLoadError",
               "PromptTooLongError", "UnknownComponentError"),
    "graphed_function": ("GraphedFunction",),
    "hookspecs": ("hookimpl",),
    "models.base": ("DiffusionLM", "KVCache", "ModelSpec"),
    "options": ("NoOptions", "Options", "check_range"),
    "plugins": ("make_plugin_manager",),
    "registry": ("Registry",),
    "result": ("GenerationResult", "StepTrace"),
    "state": ("Commit", "DecodeState", "ForwardOutput", "ForwardPlan"),
    "strategy": ("Strategy",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:  # pragma: no cover
    from .components import CachePolicy, Component, Guide, Scheduler, StrategyContext
    from .engine import Engine
    from .errors import (DllmError, IncompatibleStrategyError, ModelFilesError, OptionError, PluginLoadError,
                         PromptTooLongError, UnknownComponentError)
    from .graphed_function import GraphedFunction
    from .hookspecs import hookimpl
    from .models.base import DiffusionLM, KVCache, ModelSpec
    from .options import NoOptions, Options, check_range
    from .plugins import make_plugin_manager
    from .registry import Registry
    from .result import GenerationResult, StepTrace
    from .state import Commit, DecodeState, ForwardOutput, ForwardPlan
    from .strategy import Strategy


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dllm_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "CachePolicy", "Commit", "Component", "DecodeState", "DiffusionLM", "DllmError", "Engine", "ForwardOutput",
    "ForwardPlan", "GenerationResult", "GraphedFunction", "Guide", "IncompatibleStrategyError", "KVCache", "ModelFilesError",
    "ModelSpec", "NoOptions", "OptionError", "Options", "PluginLoadError", "PromptTooLongError", "Registry",
    "Scheduler", "StepTrace", "Strategy", "StrategyContext", "UnknownComponentError", "check_range", "hookimpl",
    "make_plugin_manager",
]
