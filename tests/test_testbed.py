"""The testbed task (generator, split, scoring) and the shipped testbed models through the eval loop."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dllm_core.eval import testbed

ASSETS = Path(testbed.__file__).resolve().parents[1] / "assets"
LLADA_DIR, AR_DIR = ASSETS / "testbed-llada", ASSETS / "testbed-ar"
MAX_BYTES = 16 * 1024 * 1024


def _shipped(path: Path) -> Path:
    if not (path / "model.safetensors").exists():
        pytest.skip(f"shipped testbed model {path} not present (train it with training/train_testbed.py)")
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run torch single-threaded: on small shared CPUs two threads are many times slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


# -- generator and split ---------------------------------------------------------------------

def test_generation_is_deterministic() -> None:
    assert testbed.problems(50, seed=3) == testbed.problems(50, seed=3)
    assert testbed.problems(50, seed=3) != testbed.problems(50, seed=4)
    assert testbed.problems(20, seed=0, split="train") == testbed.problems(20, seed=0, split="train")


def test_splits_are_disjoint_and_hash_defined() -> None:
    train = testbed.problems(5000, seed=0, split="train")
    test = testbed.problems(2000, seed=0, split="test")
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(testbed.is_heldout(p.question) for p in test)
    assert not any(testbed.is_heldout(p.question) for p in train)
    assert len({p.question for p in test}) == len(test)  # no duplicates within a list
    # About HELDOUT_PERCENT of all generated problems fall in the held-out split.
    import random

    rng = random.Random(0)
    share = sum(testbed.is_heldout(testbed.generate_problem(rng).question) for _ in range(4000)) / 4000
    assert abs(share - testbed.HELDOUT_PERCENT / 100) < 0.03


def test_worked_steps_are_correct_and_chained() -> None:
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
    for p in testbed.problems(500, seed=1):
        prev = None
        for step in p.steps:
            a, op, b, c = re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)\.", step).groups()  # type: ignore[union-attr]
            assert ops[op](int(a), int(b)) == int(c), step
            if op == "/":
                assert int(a) % int(b) == 0
            prev = int(c)
        assert prev == p.answer and 0 <= p.answer <= testbed.MAX_VALUE
        assert 2 <= len(p.steps) <= 4 and len(p.completion) <= testbed.MAX_COMPLETION_CHARS
        assert p.completion.endswith(f"The answer is {p.answer}.") and p.prompt.endswith("\nAnswer:")


def test_extract_answer_and_score() -> None:
    assert testbed.extract_answer(" 12+7=19. 19-5=14. The answer is 14.") == 14
    assert testbed.extract_answer(" 12+7=19. 19-5=14.") == 14  # no sentence: the last number
    assert testbed.extract_answer("the answer is 3 or 5") == 3
    assert testbed.extract_answer("") is None
    assert testbed.score(" 2+2=4. The answer is 4.", 4)
    assert not testbed.score(" 2+2=4. The answer is 5.", 4)
    p = testbed.problems(1)[0]
    assert testbed.score(p.completion, p.answer)


def test_task_items_follow_n_seed_and_limit() -> None:
    items = testbed.TASK.items(None, n=10, seed=0)
    assert [i.target for i in items] == [p.answer for p in testbed.problems(10, seed=0)]
    assert len(testbed.TASK.items(None, limit=3, n=10)) == 3
    assert testbed.TASK.score(items[0], items[0].extra["reference"]).correct


# -- shipped assets --------------------------------------------------------------------------

def test_shipped_checkpoints_layout_and_size() -> None:
    for d in (_shipped(LLADA_DIR), _shipped(AR_DIR)):
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "generation_config.json"):
            assert (d / name).is_file(), d / name
        assert sum(f.stat().st_size for f in d.iterdir()) <= MAX_BYTES
    cfg = json.loads((LLADA_DIR / "config.json").read_text())
    gen = json.loads((LLADA_DIR / "generation_config.json").read_text())
    assert cfg["model_type"] == "llada" and gen["mask_token_id"] == cfg["mask_token_id"]
    assert gen["eos_token_id"] == cfg["eos_token_id"]
    log = json.loads((ASSETS / "training_log.json").read_text())
    lo, hi = log["args"]["acc_range"]
    assert log["diffusion"]["in_range"] and lo <= log["diffusion"]["final_eval"]["accuracy"] <= hi


def test_shipped_tokenizer_loads_with_autotokenizer() -> None:
    from transformers import AutoTokenizer

    cfg = json.loads((_shipped(LLADA_DIR) / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(LLADA_DIR)
    assert tok.mask_token_id == cfg["mask_token_id"] and tok.eos_token_id == cfg["eos_token_id"]
    assert len(tok) <= cfg["vocab_size"]
    p = testbed.problems(1)[0]
    ids = tok(p.prompt + p.completion, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == p.prompt + p.completion
    digits = tok("1234", add_special_tokens=False)["input_ids"]
    assert len(digits) == 4  # digits are single tokens


def test_shipped_ar_guide_loads_and_solves_a_problem(one_thread: None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(_shipped(AR_DIR)).eval()
    tok = AutoTokenizer.from_pretrained(AR_DIR)
    p = testbed.problems(1, seed=0)[0]
    ids = tok(p.prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=64, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert testbed.score(text, p.answer), text


# -- the eval loop on the shipped diffusion model --------------------------------------------

def test_eval_loop_with_shipped_model(one_thread: None) -> None:
    from dllm_core import Engine
    from dllm_core.eval import run_eval

    engine = Engine(model=_shipped(LLADA_DIR), device="cpu", dtype="fp32")
    r = run_eval(engine, "testbed", limit=4, batch_size=4, progress=False)
    assert r["n"] == 4 and r["nfe"] == 64 and r["steps"] == 64  # vanilla: one token per step
    assert r["accuracy"] >= 0.5, [rec["completion"] for rec in r["records"]]
    assert 0 < r["tokens_per_step"] <= 1 and r["tokens_per_second"] > 0
    assert r["generated_tokens"] == sum(rec["tokens"] for rec in r["records"])
    assert json.dumps(r)  # the summary is JSON-serialisable
    rec = r["records"][0]
    assert rec["target"] == testbed.problems(1)[0].answer and isinstance(rec["correct"], bool)


def test_cli_eval_testbed(one_thread: None, tmp_path: Path) -> None:
    from dllm_core.cli.main import main

    out = tmp_path / "result.json"
    rc = main(["eval", "testbed", "--model", str(_shipped(LLADA_DIR)), "--device", "cpu", "--n", "2",
               "--batch-size", "2", "--json", str(out), "--no-progress"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["n"] == 2 and result["task"] == "testbed" and "accuracy" in result
    assert result["config"]["strategy"]["cache"]["name"] == "none"


def test_cli_eval_requires_data_for_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    from dllm_core.cli.main import main

    assert main(["eval", "gsm8k", "--model", str(_shipped(LLADA_DIR)), "--device", "cpu"]) == 2
    assert "--data" in capsys.readouterr().err
