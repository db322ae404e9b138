"""dllm_core: fast, faithful inference for diffusion language models.

Public API::

    from dllm_core import Engine
    engine = Engine("GSAI-ML/LLaDA-8B-Instruct", cache="dual", scheduler="threshold")
    print(engine.generate("What is 7 * 6?", gen_length=64, block_length=32).text)

Plugin authors subclass :class:`CachePolicy`, :class:`Scheduler` or :class:`Guide` and register
them from a ``@hookimpl`` (see :mod:`dllm_core.hookspecs`).
"""

from __future__ import annotations

from .components import CachePolicy, Component, Guide, Scheduler, StrategyContext
from .engine import Engine
from .errors import (DllmError, IncompatibleStrategyError, ModelFilesError, OptionError, PluginLoadError,
                     PromptTooLongError, UnknownComponentError)
from .hookspecs import hookimpl
from .models.base import DiffusionLM, KVCache, ModelSpec
from .options import NoOptions, Options, check_range
from .plugins import make_plugin_manager
from .registry import Registry
from .result import GenerationResult, StepTrace
from .state import Commit, DecodeState, ForwardOutput, ForwardPlan
from .strategy import Strategy

__version__ = "0.1.0"

__all__ = [
    "CachePolicy", "Commit", "Component", "DecodeState", "DiffusionLM", "DllmError", "Engine", "ForwardOutput",
    "ForwardPlan", "GenerationResult", "Guide", "IncompatibleStrategyError", "KVCache", "ModelFilesError",
    "ModelSpec", "NoOptions", "OptionError", "Options", "PluginLoadError", "PromptTooLongError", "Registry",
    "Scheduler", "StepTrace", "Strategy", "StrategyContext", "UnknownComponentError", "check_range", "hookimpl",
    "make_plugin_manager",
]
