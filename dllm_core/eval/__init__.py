"""Accuracy and speed evaluation: the testbed task and GSM8K, HumanEval, MBPP, MATH-500.

``run_eval(engine, "gsm8k", data_path=...)`` runs a task through an :class:`~dllm_core.Engine`;
``dllm-run eval TASK`` is the command-line front end.  Each task is one module defining ``TASK``
(a :class:`Task`): how prompts are built and how completions are scored.
"""

from __future__ import annotations

from .base import Item, Score, Task
from .runner import run_eval, summary_line
from .tasks import get_task, task_names

__all__ = ["Item", "Score", "Task", "get_task", "run_eval", "summary_line", "task_names"]
