"""MBPP (sanitized): 3-shot program synthesis, pass@1 by running each task's ``test_list``.

Prompts use the format of the MBPP paper (task text, the tests the code must pass, then the code
between ``[BEGIN]`` and ``[DONE]``).  The three worked examples are our own small problems, not
taken from the benchmark, so none of its test items is spent on shots.  With a chat template
the whole few-shot text is one user turn and the assistant's reply is opened with ``[BEGIN]``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .base import Item, Score, Task, cut_at_stop, has_chat_template, need_data, read_jsonl, render_chat
from .sandbox import run_programs

#: (task, code, tests): hand-written shots in the benchmark's style.
SHOTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Write a function to find the sum of the squares of the numbers in a list.",
     "def sum_of_squares(nums):\n    return sum(x * x for x in nums)",
     ("assert sum_of_squares([1, 2, 3]) == 14", "assert sum_of_squares([]) == 0",
      "assert sum_of_squares([-2, 5]) == 29")),
    ("Write a python function to check whether a string reads the same forwards and backwards, ignoring case.",
     "def is_palindrome(s):\n    t = s.lower()\n    return t == t[::-1]",
     ('assert is_palindrome("Level") == True', 'assert is_palindrome("python") == False',
      'assert is_palindrome("") == True')),
    ("Write a function to count the vowels in a string.",
     "def count_vowels(text):\n    return sum(1 for ch in text.lower() if ch in \"aeiou\")",
     ('assert count_vowels("hello") == 2', 'assert count_vowels("sky") == 0', 'assert count_vowels("AEIOU") == 5')),
)

_FENCED = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|$)", re.DOTALL)


def describe(task: str, tests: Sequence[str]) -> str:
    """The task statement part of a prompt (everything before the code)."""
    return (f"You are an expert Python programmer, and here is your task: {task} "
            "Your code should pass these tests:\n\n" + "\n".join(tests) + "\n")


def fewshot_text(num_fewshot: int = 3) -> str:
    return "".join(f"{describe(t, tests)}[BEGIN]\n{code}\n[DONE]\n\n" for t, code, tests in SHOTS[:num_fewshot])


def clean_completion(completion: str) -> str:
    """The code of a completion: up to ``[DONE]``, unwrapped from a Markdown code fence if any."""
    code = cut_at_stop(completion, ("[DONE]", "\n[BEGIN]"))
    m = _FENCED.search(code)
    if m:
        code = m.group(1)
    return code.strip("\n")


def build_program(code: str, tests: Sequence[str], imports: Sequence[str] = ()) -> str:
    return "\n".join(imports) + "\n" + code + "\n\n" + "\n".join(tests) + "\n"


class MBPPTask(Task):
    name = "mbpp"
    default_gen_length = 512

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout

    def items(self, tokenizer: Any, data_path: str | None = None, limit: int | None = None, *,
              num_fewshot: int = 3, chat: bool | None = None, **_: Any) -> list[Item]:
        records = list(read_jsonl(need_data(self, data_path)))[:limit]
        use_chat = has_chat_template(tokenizer) if chat is None else bool(chat)
        shots = fewshot_text(int(num_fewshot))
        out = []
        for i, r in enumerate(records):
            text = shots + describe(r["prompt"], r["test_list"])
            if use_chat:
                prompt = render_chat(tokenizer, [{"role": "user", "content": text}]) + "[BEGIN]\n"
            else:
                prompt = text + "[BEGIN]\n"
            out.append(Item(id=f"mbpp/{r.get('task_id', i)}", prompt=prompt, target=list(r["test_list"]),
                            extra={"test_imports": list(r.get("test_imports") or [])}))
        return out

    def postprocess(self, completion: str) -> str:
        return clean_completion(completion)

    def program(self, item: Item, code: str) -> str:
        return build_program(code, item.target, item.extra.get("test_imports", ()))

    def score(self, item: Item, completion: str) -> Score:
        return self.score_many([item], [completion])[0]

    def score_many(self, items: Sequence[Item], completions: Sequence[str]) -> list[Score]:
        results = run_programs([self.program(i, c) for i, c in zip(items, completions)], timeout=self.timeout)
        return [Score(correct=r.passed, extracted=c, detail="" if r.passed else f"{r.status}: {r.output[-300:]}")
                for r, c in zip(results, completions)]


TASK = MBPPTask()
