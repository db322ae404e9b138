"""HumanEval: 0-shot function completion, pass@1 by running the task's tests in the sandbox.

Base models continue the prompt (signature + docstring) and the completion is cut at the usual
top-level stop sequences.  With a chat template the function is shown in a user turn and the
assistant's reply is opened with the prompt inside a Python code fence, so the model still
continues the body (lm-eval's ``humaneval_instruct`` does the same); the completion is then
also cut at the closing fence.  The program run is ``prompt + completion + test +
check(entry_point)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Item, Score, Task, cut_at_stop, has_chat_template, need_data, read_jsonl, render_chat
from .sandbox import SandboxResult, run_programs

#: Top-level constructs that end a function body written at column 0.
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
FENCE = "```"


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The script whose clean exit means the completion passed."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def clean_completion(completion: str) -> str:
    """Cut at a closing code fence, then at the first top-level stop sequence."""
    return cut_at_stop(cut_at_stop(completion, (FENCE,)), STOP_SEQUENCES)


class HumanEvalTask(Task):
    name = "humaneval"
    default_gen_length = 512

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout

    def items(self, tokenizer: Any, data_path: str | None = None, limit: int | None = None, *,
              chat: bool | None = None, **_: Any) -> list[Item]:
        records = list(read_jsonl(need_data(self, data_path)))[:limit]
        use_chat = has_chat_template(tokenizer) if chat is None else bool(chat)
        out = []
        for r in records:
            prompt = r["prompt"]
            if use_chat:
                instruction = ("Complete the following Python function. Reply with the whole function in a "
                               f"Python code block.\n\n{FENCE}python\n{prompt}{FENCE}")
                prompt = render_chat(tokenizer, [{"role": "user", "content": instruction}]) + \
                    f"Here is the completed function:\n{FENCE}python\n{r['prompt']}"
            out.append(Item(id=r["task_id"], prompt=prompt, target=r["test"],
                            extra={"code_prompt": r["prompt"], "entry_point": r["entry_point"]}))
        return out

    def postprocess(self, completion: str) -> str:
        return clean_completion(completion)

    def program(self, item: Item, completion: str) -> str:
        return build_program(item.extra["code_prompt"], completion, item.target, item.extra["entry_point"])

    def score(self, item: Item, completion: str) -> Score:
        return self.score_many([item], [completion])[0]

    def score_many(self, items: Sequence[Item], completions: Sequence[str]) -> list[Score]:
        results = run_programs([self.program(i, c) for i, c in zip(items, completions)], timeout=self.timeout)
        return [_verdict(r, c) for r, c in zip(results, completions)]


def _verdict(result: SandboxResult, completion: str) -> Score:
    detail = "" if result.passed else f"{result.status}: {result.output[-300:]}"
    return Score(correct=result.passed, extracted=completion, detail=detail)


TASK = HumanEvalTask()
