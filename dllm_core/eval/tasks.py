"""The evaluation tasks by name (imported lazily: a task module loads only when it is used)."""

from __future__ import annotations

import importlib

from ..errors import UnknownComponentError
from .base import Task

#: Task name -> module defining ``TASK``.
TASK_MODULES: dict[str, str] = {
    "testbed": "dllm_core.eval.testbed",
    "gsm8k": "dllm_core.eval.gsm8k",
    "humaneval": "dllm_core.eval.humaneval",
    "mbpp": "dllm_core.eval.mbpp",
    "math500": "dllm_core.eval.math500",
}


def task_names() -> list[str]:
    return list(TASK_MODULES)


def get_task(name: str) -> Task:
    """The task registered under ``name`` (``math-500`` and ``MATH500`` are accepted too)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASK_MODULES:
        raise UnknownComponentError(f"unknown evaluation task {name!r}; available: {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[key]).TASK
