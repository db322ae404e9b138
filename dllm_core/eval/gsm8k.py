"""GSM8K: grade-school math word problems, few-shot chain of thought, numeric answer match.

Prompt: ``num_fewshot`` (default 5, Fast-dLLM's setting; d2Cache used 4, FlashDLM 8) solved
examples drawn with a fixed seed from the training file, in the ``Question: ...\\nAnswer: ...``
format whose answers end in ``#### N``; with a chat template the examples become alternating
user/assistant turns.  Answer extraction: the number after ``####``, else after "The (final)
answer is", else the last number of the completion; compared numerically with the reference.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from ..errors import DllmError
from .base import Item, Score, Task, has_chat_template, need_data, read_jsonl, render_chat

_NUM = r"-?[$]?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_HASH_RE = re.compile(r"####\s*(" + _NUM + ")")
_ANSWER_IS_RE = re.compile(r"answer is[:\s]*\$?\\?\(?\s*(?:\\boxed\{)?(" + _NUM + ")", re.IGNORECASE)
_ANY_RE = re.compile(_NUM)


def parse_number(text: str) -> float | None:
    """``"$1,234.50"`` -> 1234.5; None when ``text`` holds no number."""
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        return float(cleaned)
    except ValueError:
        return None


def extract_answer(completion: str) -> float | None:
    """The predicted number: after '####', else after 'The answer is', else the last number."""
    for regex in (_HASH_RE, _ANSWER_IS_RE):
        m = regex.search(completion)
        if m:
            value = parse_number(m.group(1))
            if value is not None:
                return value
    nums = _ANY_RE.findall(completion)
    for raw in reversed(nums):
        value = parse_number(raw)
        if value is not None:
            return value
    return None


def reference_answer(answer_field: str) -> float:
    """The gold number of a GSM8K ``answer`` field (the text after ``####``)."""
    value = parse_number(answer_field.split("####")[-1].strip())
    if value is None:
        raise DllmError(f"GSM8K reference answer without a number after '####': {answer_field[-80:]!r}")
    return value


def numbers_match(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


class GSM8KTask(Task):
    name = "gsm8k"
    default_gen_length = 256
    stop_strings = ("Question:", "\n\n\n")

    def items(self, tokenizer: Any, data_path: str | None = None, limit: int | None = None, *,
              num_fewshot: int = 5, fewshot_path: str | None = None, fewshot_seed: int = 1234,
              chat: bool | None = None, **_: Any) -> list[Item]:
        path = need_data(self, data_path)
        records = list(read_jsonl(path))[:limit]
        shots = self._shots(path, fewshot_path, int(num_fewshot), int(fewshot_seed))
        use_chat = has_chat_template(tokenizer) if chat is None else bool(chat)
        out = []
        for i, r in enumerate(records):
            prompt = _render(tokenizer, shots, r["question"], use_chat)
            out.append(Item(id=f"gsm8k/{i}", prompt=prompt, target=reference_answer(r["answer"]),
                            extra={"question": r["question"]}))
        return out

    @staticmethod
    def _shots(data_path: str, fewshot_path: str | None, k: int, seed: int) -> list[dict[str, str]]:
        if k <= 0:
            return []
        path = Path(fewshot_path) if fewshot_path else Path(data_path).with_name("gsm8k_train.jsonl")
        if not path.exists():
            raise DllmError(f"GSM8K few-shot examples come from the training split, but {path} does not exist; "
                            "pass --task-opt fewshot_path=PATH or --task-opt num_fewshot=0")
        pool = list(read_jsonl(path))
        return random.Random(seed).sample(pool, k)

    def score(self, item: Item, completion: str) -> Score:
        got = extract_answer(completion)
        return Score(correct=numbers_match(got, item.target), extracted=got)


def _render(tokenizer: Any, shots: list[dict[str, str]], question: str, chat: bool) -> str:
    if not chat:
        parts = [f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots]
        return "".join(parts) + f"Question: {question}\nAnswer:"
    messages: list[dict[str, str]] = []
    for s in shots:  # few-shot as a multi-turn conversation (lm-eval's fewshot_as_multiturn)
        messages += [{"role": "user", "content": f"Question: {s['question']}"},
                     {"role": "assistant", "content": s["answer"]}]
    messages.append({"role": "user", "content": f"Question: {question}"})
    return render_chat(tokenizer, messages)


TASK = GSM8KTask()
