"""An example dllm_core plugin: cache policy ``periodic`` and scheduler ``left_to_right``.

This module is the plugin: ``pyproject.toml`` names it under the ``dllm_core`` entry-point
group, and dllm_core registers it in every fresh plugin manager.  The registration hooks hand
over lazy ``"module:Class"`` strings, so importing this module (which happens whenever any
engine starts) costs nothing: torch and the component modules are imported only when a
component is used.
"""

from __future__ import annotations

from typing import Any, Callable

from dllm_core import hookimpl

__version__ = "0.1.0"


@hookimpl
def dllm_register_caches(register: Callable[..., Any]) -> None:
    register("periodic", "dllm_plugin_example.periodic:PeriodicCache",
             description="refresh every `period` steps of a block, else recompute the block only")


@hookimpl
def dllm_register_schedulers(register: Callable[..., Any]) -> None:
    register("left_to_right", "dllm_plugin_example.left_to_right:LeftToRight",
             description="commit the leftmost n masked columns of the block per step", aliases=("l2r",))
