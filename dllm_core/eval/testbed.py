"""The testbed task: seeded multi-step arithmetic word problems with worked steps.

The project trains its own small diffusion LM on this task (``training/train_testbed.py``) and
uses it as the yardstick for "no accuracy lost" (design.md §7).  The task is chosen so that the
tokens of an answer depend on each other: every worked step reuses the previous step's result,
and the final answer repeats the last result, so committing many tokens in parallel without
looking at the others can go wrong, exactly the failure fast decoders must avoid.

Example::

    Question: Tom has 12 apples. He buys 7 more. Then he gives away 5. How many apples does Tom
    have now?
    Answer: 12+7=19. 19-5=14. The answer is 14.

Problems are generated from a ``random.Random`` seed, so a (split, seed, n) triple always gives
the same list.  The held-out split is defined by a hash of the question text, so the training
and held-out sets are disjoint by construction, whatever seeds either side uses.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any, Literal

from .base import Item, Score, Task

Split = Literal["train", "test"]

#: Name and subject pronoun.  A fixed, small inventory keeps the vocabulary tiny.
NAMES: tuple[tuple[str, str], ...] = (
    ("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Mia", "she"), ("Sam", "he"), ("Lily", "she"),
    ("Max", "he"), ("Zoe", "she"), ("Leo", "he"), ("Emma", "she"), ("Jack", "he"), ("Ella", "she"),
    ("Noah", "he"), ("Ava", "she"), ("Liam", "he"), ("Ivy", "she"), ("Owen", "he"), ("Ruby", "she"),
    ("Finn", "he"), ("Nora", "she"),
)
ITEMS: tuple[str, ...] = (
    "apples", "pens", "books", "coins", "cards", "eggs", "stamps", "marbles", "cookies", "shells",
    "stickers", "candies", "balls", "flowers", "toys", "pencils",
)
#: The completion must fit a 64-token generation with room for at least one EOS.  The tokenizer
#: splits digits and never merges across characters beyond what the text has, so tokens <= chars.
MAX_COMPLETION_CHARS = 62
#: Fraction of the problem space (by question hash) reserved for the held-out split.
HELDOUT_PERCENT = 10
#: Every intermediate result stays below this, so numbers have at most three digits.
MAX_VALUE = 999


@dataclass(frozen=True)
class Problem:
    """One word problem: the question, the worked equations and the integer answer."""

    question: str
    steps: tuple[str, ...]
    answer: int

    @property
    def prompt(self) -> str:
        """The text the model is conditioned on (no chat template: the testbed model has none)."""
        return f"Question: {self.question}\nAnswer:"

    @property
    def completion(self) -> str:
        """The reference completion, starting with the space that follows ``Answer:``."""
        return " " + " ".join(self.steps) + f" The answer is {self.answer}."


def is_heldout(question: str) -> bool:
    """True when ``question`` belongs to the held-out split (a stable hash, not Python's ``hash``)."""
    digest = hashlib.sha256(question.encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % 100 < HELDOUT_PERCENT


def split_of(question: str) -> Split:
    return "test" if is_heldout(question) else "train"


def _sentence(pronoun: str, rest: str, then: bool) -> str:
    subject = f"Then {pronoun}" if then else pronoun.capitalize()
    return f"{subject} {rest}"


def generate_problem(rng: random.Random) -> Problem:
    """Draw one problem.  Retries internally until the completion fits the generation budget."""
    while True:
        p = _draw(rng)
        if len(p.completion) <= MAX_COMPLETION_CHARS:
            return p


def _draw(rng: random.Random) -> Problem:
    name, pron = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    x = rng.randint(2, 60)
    sentences = [f"{name} has {x} {item}."]
    steps: list[str] = []
    n_ops = rng.randint(2, 4)
    question = f"How many {item} does {name} have now?"
    # Equations, not operations, bound the length: a box purchase writes two equations.
    while len(steps) < n_ops:
        then = len(sentences) > 1 and rng.random() < 0.5
        last = len(steps) == n_ops - 1
        kind = rng.choice(("add", "add", "sub", "sub", "mul", "boxes", "share"))
        if kind == "add" and x < MAX_VALUE - 1:
            n = rng.randint(1, min(60, MAX_VALUE - x))
            verb = rng.choice(("buys {n} more", "finds {n} more", "gets {n} more from a friend"))
            sentences.append(_sentence(pron, verb.format(n=n) + ".", then))
            steps.append(f"{x}+{n}={x + n}.")
            x += n
        elif kind == "sub" and x >= 3:
            n = rng.randint(1, x - 1)
            verb = rng.choice(("gives away {n}", "loses {n}", "sells {n}"))
            sentences.append(_sentence(pron, verb.format(n=n) + ".", then))
            steps.append(f"{x}-{n}={x - n}.")
            x -= n
        elif kind == "mul" and 2 * x <= MAX_VALUE:
            k = rng.randint(2, min(5, MAX_VALUE // x))
            word = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}[k]
            sentences.append(f"Now {pron} has {word} as many {item}.")
            steps.append(f"{x}*{k}={x * k}.")
            x *= k
        elif kind == "boxes" and len(steps) <= n_ops - 2:
            a, b = rng.randint(2, 6), rng.randint(2, 12)
            if x + a * b > MAX_VALUE:
                continue
            sentences.append(_sentence(pron, f"buys {a} boxes with {b} {item} each.", then))
            steps.append(f"{a}*{b}={a * b}.")
            steps.append(f"{x}+{a * b}={x + a * b}.")
            x += a * b
        elif kind == "share" and last:
            divisors = [k for k in range(2, 10) if x % k == 0 and x // k >= 1]
            if not divisors:
                continue
            k = rng.choice(divisors)
            sentences.append(_sentence(pron, f"shares them equally among {k} friends.", then))
            steps.append(f"{x}/{k}={x // k}.")
            x //= k
            question = f"How many {item} does each friend get?"
    return Problem(question=" ".join(sentences + [question]), steps=tuple(steps), answer=x)


def problems(n: int, seed: int = 0, split: Split = "test") -> list[Problem]:
    """``n`` distinct problems of ``split``, deterministic in ``(n, seed, split)``.

    The two splits draw from differently salted generators as well as filtering by hash, so that
    the same seed gives unrelated problem lists on either side.
    """
    rng = random.Random(f"dllm-testbed/{split}/{seed}")
    out: list[Problem] = []
    seen: set[str] = set()
    while len(out) < n:
        p = generate_problem(rng)
        if split_of(p.question) != split or p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
    return out


_ANSWER_RE = re.compile(r"[Tt]he answer is\s*(-?\d+)")
_NUMBER_RE = re.compile(r"-?\d+")


def extract_answer(text: str) -> int | None:
    """The integer after the first "The answer is", else the last integer of ``text``, else None."""
    m = _ANSWER_RE.search(text)
    if m:
        return int(m.group(1))
    nums = _NUMBER_RE.findall(text)
    return int(nums[-1]) if nums else None


def score(text: str, answer: int) -> bool:
    """True when the completion's extracted answer equals ``answer``."""
    return extract_answer(text) == answer


class TestbedTask(Task):
    """The testbed as an evaluation task (no data file: problems are generated)."""

    __test__ = False  # not a pytest test class, despite the name
    name = "testbed"
    default_gen_length = 64
    needs_data = False
    stop_strings = ("\nQuestion:",)

    def items(self, tokenizer: Any, data_path: str | None = None, limit: int | None = None, *,
              n: int = 1000, seed: int = 0, **_: Any) -> list[Item]:
        count = n if limit is None else min(n, limit)
        return [Item(id=f"testbed/{seed}/{i}", prompt=p.prompt, target=p.answer,
                     extra={"reference": p.completion})
                for i, p in enumerate(problems(count, seed=seed, split="test"))]

    def score(self, item: Item, completion: str) -> Score:
        got = extract_answer(completion)
        return Score(correct=got == item.target, extracted=got)


TASK = TestbedTask()
