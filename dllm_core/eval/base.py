"""What every evaluation task provides: items to prompt with, and a scorer for completions."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DllmError
from ..models.chat import has_chat_template

__all__ = ["Item", "Score", "Task", "cut_at_stop", "has_chat_template", "need_data", "read_jsonl", "render_chat"]


@dataclass
class Item:
    """One evaluation example, with its prompt already rendered to text."""

    id: str
    prompt: str               #: exact prompt text, chat template already applied where used
    target: Any               #: what ``Task.score`` compares against (answer, tests, ...)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Score:
    """The verdict on one completion."""

    correct: bool
    extracted: Any = None     #: the answer (or program) the scorer read from the completion
    detail: str = ""          #: why it failed, when known (sandbox status, parse failure)


class Task(ABC):
    """An evaluation task: ``items`` builds prompts, ``postprocess`` trims, ``score`` judges."""

    #: Registry name (``dllm-run eval NAME``).
    name: str = ""
    #: Generation length used when the caller gives none (the papers' settings).
    default_gen_length: int = 256
    #: Whether a ``--data`` file is required.
    needs_data: bool = True
    #: Completions are cut at the first of these (few-shot prompts make the model go on).
    stop_strings: tuple[str, ...] = ()

    @abstractmethod
    def items(self, tokenizer: Any, data_path: str | None = None, limit: int | None = None,
              **options: Any) -> list[Item]:
        """The items to evaluate, prompts rendered for ``tokenizer`` (chat template when it has one)."""

    @abstractmethod
    def score(self, item: Item, completion: str) -> Score:
        """Judge a post-processed completion of ``item``."""

    def postprocess(self, completion: str) -> str:
        """Cut ``completion`` at the first stop string."""
        return cut_at_stop(completion, self.stop_strings)

    def score_many(self, items: Sequence[Item], completions: Sequence[str]) -> list[Score]:
        """Score a batch (code tasks override this to run their sandboxes in parallel)."""
        return [self.score(i, c) for i, c in zip(items, completions)]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file, gzip-compressed when the name ends in ``.gz``."""
    p = Path(path)
    if not p.exists():
        raise DllmError(f"evaluation data file {p} does not exist")
    if p.suffix == ".gz":
        import gzip

        handle = gzip.open(p, "rt", encoding="utf-8")
    else:
        handle = p.open(encoding="utf-8")
    with handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Messages through the tokenizer's chat template, ending with the assistant's turn opened."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def need_data(task: Task, data_path: str | None) -> str:
    """``data_path``, or a clear error naming the task and the expected file."""
    if not data_path:
        raise DllmError(f"task {task.name!r} needs its data file: pass --data PATH (e.g. the benchmark's .jsonl)")
    return data_path
