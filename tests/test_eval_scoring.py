"""Scoring of the real benchmarks on their own reference answers, and the code sandbox.

Uses the benchmark files in ``$DLLM_DATA_DIR`` (default ``../shared/data`` next to the repository);
each test skips with the missing file named when they are absent.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from dllm_core.eval import gsm8k, humaneval, math500, mbpp
from dllm_core.eval.base import Item, read_jsonl
from dllm_core.eval.sandbox import run_program

DATA = Path(os.environ.get("DLLM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def data_file(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"benchmark file {path} not present (set DLLM_DATA_DIR to the folder holding {name})")
    return path


class _PlainTokenizer:
    """Stands in for a tokenizer without a chat template (prompts are rendered as plain text)."""

    chat_template = None


# -- GSM8K -----------------------------------------------------------------------------------

def test_gsm8k_reference_answers_extract_and_match() -> None:
    records = list(read_jsonl(data_file("gsm8k_test.jsonl")))[:200]
    for r in records:
        gold = gsm8k.reference_answer(r["answer"])
        assert gsm8k.numbers_match(gsm8k.extract_answer(r["answer"]), gold), r["answer"][-80:]
        # The forms a model writes instead of "####".
        value = int(gold) if gold == int(gold) else gold
        assert gsm8k.numbers_match(gsm8k.extract_answer(f"So the answer is {value}."), gold)
        assert gsm8k.numbers_match(gsm8k.extract_answer(f"... total {value}"), gold)
        assert not gsm8k.numbers_match(gsm8k.extract_answer(f"The answer is {value + 1}."), gold)


def test_gsm8k_number_formats() -> None:
    assert gsm8k.extract_answer("She pays $1,234.50 in total.\n#### $1,234.50") == 1234.5
    assert gsm8k.extract_answer("The answer is -3.") == -3
    assert gsm8k.extract_answer("no digits here") is None
    assert gsm8k.numbers_match(gsm8k.extract_answer("#### 18.00"), 18.0)


def test_gsm8k_prompt_is_fewshot_and_items_score() -> None:
    path = data_file("gsm8k_test.jsonl")
    data_file("gsm8k_train.jsonl")
    items = gsm8k.TASK.items(_PlainTokenizer(), str(path), limit=3, num_fewshot=5)
    assert len(items) == 3
    assert items[0].prompt.count("Question:") == 6 and items[0].prompt.endswith("Answer:")
    # A completion that continues into a new question is cut before it.
    done = gsm8k.TASK.postprocess(" 2 + 2 = 4\n#### 4\n\nQuestion: next one")
    assert "Question" not in done


# -- HumanEval -------------------------------------------------------------------------------

def _humaneval_items(n: int) -> list[Item]:
    return humaneval.TASK.items(_PlainTokenizer(), str(data_file("HumanEval.jsonl.gz")), limit=n)


def test_humaneval_canonical_solutions_pass() -> None:
    records = list(read_jsonl(data_file("HumanEval.jsonl.gz")))[:5]
    items = _humaneval_items(5)
    completions = [humaneval.TASK.postprocess(r["canonical_solution"]) for r in records]
    scores = humaneval.TASK.score_many(items, completions)
    assert all(s.correct for s in scores), [s.detail for s in scores]


def test_humaneval_broken_solution_fails() -> None:
    item = _humaneval_items(1)[0]
    assert not humaneval.TASK.score(item, "    return not True\n").correct
    assert not humaneval.TASK.score(item, "    import sys\n    sys.exit(0)\n").correct  # early exit is no pass


def test_humaneval_postprocess_cuts_at_top_level_code() -> None:
    body = "    return 1\n"
    assert humaneval.clean_completion(body + "\n\ndef other():\n    pass\n") == body + "\n"
    assert humaneval.clean_completion(body + "```\nSome explanation") == body


# -- MBPP ------------------------------------------------------------------------------------

def test_mbpp_reference_code_passes() -> None:
    path = data_file("mbpp_sanitized_test.jsonl")
    records = list(read_jsonl(path))[:6]
    items = mbpp.TASK.items(_PlainTokenizer(), str(path), limit=6)
    assert items[0].prompt.count("[BEGIN]") == 4 and items[0].prompt.endswith("[BEGIN]\n")
    completions = [mbpp.TASK.postprocess(r["code"] + "\n[DONE]\n\nYou are an expert") for r in records]
    scores = mbpp.TASK.score_many(items, completions)
    assert all(s.correct for s in scores), [s.detail for s in scores]
    assert not mbpp.TASK.score(items[0], "def nothing():\n    pass").correct


def test_mbpp_fenced_completion_is_unwrapped() -> None:
    assert mbpp.clean_completion("```python\ndef f():\n    return 1\n```\n[DONE]") == "def f():\n    return 1"


# -- sandbox ---------------------------------------------------------------------------------

def test_sandbox_kills_an_infinite_loop_within_its_timeout() -> None:
    t0 = time.perf_counter()
    res = run_program("while True:\n    pass\n", timeout=2.0)
    assert res.status == "timeout" and not res.passed
    assert time.perf_counter() - t0 < 6.0


def test_sandbox_limits_memory_and_reports_errors() -> None:
    assert run_program("x = bytearray(8 * 1024 ** 3)\n", timeout=10, memory_mb=512).status == "failed"
    failed = run_program("raise ValueError('boom')\n")
    assert failed.status == "failed" and "boom" in failed.output
    assert run_program("print('ok')\n").passed


# -- MATH-500 --------------------------------------------------------------------------------

def test_math500_answers_normalise_and_match_themselves() -> None:
    records = list(read_jsonl(data_file("math500_test.jsonl")))
    for r in records:
        assert math500.answers_match(r["answer"], r["answer"]), r["answer"]
        # As a model would write them: boxed, or in the Minerva final-answer sentence.
        assert math500.answers_match(math500.extract_answer(f"so we get $\\boxed{{{r['answer']}}}$."), r["answer"])
        sentence = f"Final Answer: The final answer is ${r['answer']}$. I hope it is correct."
        assert math500.answers_match(math500.extract_answer(sentence), r["answer"]), r["answer"]


@pytest.mark.parametrize("predicted, reference", [
    ("\\dfrac{3}{4}", "\\frac{3}{4}"), ("0.75", "\\frac34"), ("\\frac{14}{3}", "\\tfrac{14}{3}"),
    ("10\\text{ cm}", "10"), ("90^\\circ", "90"), ("x = 5", "5"), ("\\left( 3, \\frac{\\pi}{2} \\right)",
     "(3,\\frac{\\pi}{2})"), ("2,220", "2220"), ("5.", "5"), ("\\!-50", "-50"), (".5", "\\frac{1}{2}"),
    ("11\\sqrt2", "11\\sqrt{2}"), ("\\text{Evelyn}", "Evelyn"), ("50\\%", "50"),
])
def test_math500_equivalent_forms(predicted: str, reference: str) -> None:
    assert math500.answers_match(predicted, reference)


@pytest.mark.parametrize("predicted, reference", [("3", "4"), ("\\frac{1}{3}", "0.33"), ("", "0"), (None, "1")])
def test_math500_different_answers(predicted: str | None, reference: str) -> None:
    assert not math500.answers_match(predicted, reference)


def test_math500_boxed_with_nested_braces() -> None:
    assert math500.last_boxed("a \\boxed{1} then \\boxed{\\frac{a}{b}} end") == "\\frac{a}{b}"
    items = math500.TASK.items(_PlainTokenizer(), str(data_file("math500_test.jsonl")), limit=1)
    assert items[0].prompt.count("Problem:") == 5 and items[0].prompt.endswith("Solution:")
    assert json.dumps(items[0].target)
