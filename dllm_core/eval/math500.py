"""MATH-500: 4-shot Minerva-style prompts, final-answer extraction, normalised string match.

Prompt: four worked examples (our own problems, in the Minerva format: ``Problem:`` /
``Solution:`` ending in "Final Answer: The final answer is $X$. I hope it is correct."), then
the problem.  Extraction: the text after "final answer is" (dollar signs stripped), else the
content of the last ``\\boxed{...}``.  Matching: both sides normalised (spaces, ``\\left``/``\\right``,
spacing commands, ``dfrac``/``tfrac``, trailing period, ``\\text{...}`` units, degrees, percent,
a leading ``x =``) and compared as strings, and also as numbers when both parse (decimals and
simple fractions).  This is a careful string match, not a symbolic equivalence check.
"""

from __future__ import annotations

import re
from typing import Any

from .base import Item, Score, Task, has_chat_template, need_data, read_jsonl, render_chat

SHOTS: tuple[tuple[str, str, str], ...] = (
    ("What is the smallest positive integer $n$ such that $3n \\equiv 2 \\pmod{7}$?",
     "Trying $n = 1, 2, 3$ gives $3n = 3, 6, 9$, and $9 = 7 + 2$, so $9 \\equiv 2 \\pmod{7}$.", "3"),
    ("Simplify $\\sqrt{50} + \\sqrt{18}$.",
     "We have $\\sqrt{50} = 5\\sqrt{2}$ and $\\sqrt{18} = 3\\sqrt{2}$, so the sum is $8\\sqrt{2}$.", "8\\sqrt{2}"),
    ("A bag holds 4 red and 6 blue marbles. One marble is drawn at random. What is the probability "
     "that it is red? Express your answer as a common fraction.",
     "There are $4 + 6 = 10$ marbles and 4 of them are red, so the probability is $\\frac{4}{10} = \\frac{2}{5}$.",
     "\\frac{2}{5}"),
    ("Find all real $x$ with $x^2 - 5x + 6 = 0$. Enter the solutions separated by commas.",
     "The quadratic factors as $(x - 2)(x - 3) = 0$, so $x = 2$ or $x = 3$.", "2, 3"),
)

_FINAL_RE = re.compile(r"final answer is\s*(.+?)(?:\.?\s*I hope it is correct|\n|$)", re.IGNORECASE | re.DOTALL)


def fewshot_text(num_fewshot: int = 4) -> str:
    return "".join(f"Problem:\n{p}\n\nSolution:\n{s}\nFinal Answer: The final answer is ${a}$. "
                   "I hope it is correct.\n\n" for p, s, a in SHOTS[:num_fewshot])


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        rest = text[start + len("\\boxed"):].strip()  # "\boxed 5"
        return rest.split("$")[0].strip() or None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def extract_answer(completion: str) -> str | None:
    """The final answer of a Minerva-style solution, else the last boxed expression."""
    m = _FINAL_RE.search(completion)
    if m:
        ans = m.group(1).strip().strip("$").strip()
        boxed = last_boxed(ans)
        return boxed if boxed is not None else ans
    return last_boxed(completion)


def _strip_text_units(s: str) -> str:
    # "10\text{ cm}" -> "10"; "\text{Evelyn}" -> "Evelyn" (a unit only when something precedes it).
    s = re.sub(r"(?<=[0-9}])\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]+\}(\^\{?\d\}?)?$", "", s)
    return re.sub(r"\\(?:text|mbox|mathrm|textbf)\{(.*?)\}", r"\1", s)


def _fix_fracs(s: str) -> str:
    # \frac12 -> \frac{1}{2}, \frac1{2} -> \frac{1}{2}, \sqrt2 -> \sqrt{2}
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def normalize(answer: str | None) -> str:
    """A canonical string for comparing final answers (see the module docstring)."""
    if answer is None:
        return ""
    s = answer.strip()
    s = s.replace("\n", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\:", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\circ", "").replace("°", "")
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = _strip_text_units(s)
    s = s.replace("\\ ", "").replace(" ", "")
    s = s.rstrip(".")
    if re.fullmatch(r"[a-zA-Z]\s*=.+", s) and s.count("=") == 1:  # "x=5" -> "5"
        s = s.split("=", 1)[1]
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):  # thousands separators
        s = s.replace(",", "")
    s = _fix_fracs(s)
    s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)  # ".5" -> "0.5"
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    return s


def to_number(s: str) -> float | None:
    """A normalised answer as a number: ``-3``, ``2.5``, ``\\frac{3}{4}``, ``-\\frac{3}{4}``, ``3/4``."""
    try:
        return float(s)
    except ValueError:
        pass
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s) or \
        re.fullmatch(r"(-?)(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)", s)
    if m and float(m.group(3)) != 0:
        value = float(m.group(2)) / float(m.group(3))
        return -value if m.group(1) else value
    return None


def answers_match(predicted: str | None, reference: str) -> bool:
    """Normalised string equality, or numeric equality when both sides parse as numbers."""
    a, b = normalize(predicted), normalize(reference)
    if not a:
        return False
    if a == b:
        return True
    x, y = to_number(a), to_number(b)
    return x is not None and y is not None and abs(x - y) <= 1e-6 * max(1.0, abs(y))


class Math500Task(Task):
    name = "math500"
    default_gen_length = 256
    stop_strings = ("Problem:", "I hope it is correct.")

    def items(self, tokenizer: Any, data_path: str | None = None, limit: int | None = None, *,
              num_fewshot: int = 4, chat: bool | None = None, **_: Any) -> list[Item]:
        records = list(read_jsonl(need_data(self, data_path)))[:limit]
        use_chat = has_chat_template(tokenizer) if chat is None else bool(chat)
        shots = fewshot_text(int(num_fewshot))
        out = []
        for i, r in enumerate(records):
            text = f"{shots}Problem:\n{r['problem']}\n\nSolution:"
            prompt = render_chat(tokenizer, [{"role": "user", "content": text}]) if use_chat else text
            out.append(Item(id=r.get("unique_id", f"math500/{i}"), prompt=prompt, target=r["answer"],
                            extra={"subject": r.get("subject"), "level": r.get("level")}))
        return out

    def postprocess(self, completion: str) -> str:
        # Keep "I hope it is correct." out of the cut: the extractor uses it as the answer's end.
        cut = completion.find("Problem:")
        return completion if cut < 0 else completion[:cut]

    def score(self, item: Item, completion: str) -> Score:
        got = extract_answer(completion)
        return Score(correct=answers_match(got, item.target), extracted=got)


TASK = Math500Task()
