"""The engine: batching, determinism, EOS, trace, observer hooks, bad input."""

from __future__ import annotations

import pytest
import torch

from dllm_core import Engine, OptionError, PromptTooLongError, hookimpl
from dllm_core.testing.tiny import make_tiny_model

PROMPTS = [[3, 4, 5, 6, 7, 8], [9, 10], [11, 12, 13]]


@pytest.fixture(scope="module", params=["llada", "dream"])
def model(request):
    return make_tiny_model(request.param)


@pytest.mark.parametrize("scheduler", ["low_confidence", "maskgit_plus"])
def test_batch_equals_alone_with_blocks(model, scheduler):
    eng = Engine(model=model, scheduler=scheduler, device="cpu")
    batch = eng.generate_ids(PROMPTS, gen_length=16, block_length=8, steps=8)
    for i, p in enumerate(PROMPTS):
        alone = eng.generate_ids([p], gen_length=16, block_length=8, steps=8)
        assert alone.token_ids[0] == batch.token_ids[i]


def test_one_token_per_step_nfe_and_trace(model):
    eng = Engine(model=model, device="cpu")
    res = eng.generate_ids([PROMPTS[0]], gen_length=12, block_length=4, trace=True)
    assert res.nfe == res.steps == 12
    seen = sorted(c for t in res.trace for c in t.committed[0])
    assert seen == list(range(12))  # every column committed exactly once
    blocks = [t.block for t in res.trace]
    assert blocks == sorted(blocks) and set(blocks) == {0, 1, 2}
    # semi-AR: every column of block b is committed while block b is current
    assert all(4 * t.block <= c < 4 * t.block + 4 for t in res.trace for c in t.committed[0])
    assert all(t.rows_computed == len(PROMPTS[0]) + 12 for t in res.trace)


def test_fewer_steps_commit_more_per_step(model):
    eng = Engine(model=model, device="cpu")
    res = eng.generate_ids([PROMPTS[0]], gen_length=16, block_length=8, steps=4)
    assert res.nfe == 4


def test_sampling_is_seeded(model):
    eng = Engine(model=model, device="cpu")
    a = eng.generate_ids([PROMPTS[0]], gen_length=16, temperature=1.0, seed=1)
    b = eng.generate_ids([PROMPTS[0]], gen_length=16, temperature=1.0, seed=1)
    c = eng.generate_ids([PROMPTS[0]], gen_length=16, temperature=1.0, seed=2)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_no_mask_token_left_and_output_cut_at_eos(model):
    eng = Engine(model=model, device="cpu")
    res = eng.generate_ids(PROMPTS, gen_length=24)
    spec = model.spec
    for ids in res.token_ids:
        assert spec.mask_id not in ids and spec.eos_id not in ids
    assert res.generated_tokens == sum(len(t) for t in res.token_ids)


def test_generation_settings_are_validated(model):
    eng = Engine(model=model, device="cpu")
    with pytest.raises(OptionError, match="block_length"):
        eng.generate_ids([[3]], gen_length=8, block_length=16)
    with pytest.raises(OptionError, match="steps"):
        eng.generate_ids([[3]], gen_length=8, steps=0)
    with pytest.raises(OptionError, match="temperature"):
        eng.generate_ids([[3]], gen_length=8, temperature=-1)


def test_prompt_too_long_says_both_lengths(model):
    eng = Engine(model=model, device="cpu")
    limit = model.spec.max_length
    with pytest.raises(PromptTooLongError) as exc:
        eng.generate_ids([[3] * (limit - 10)], gen_length=20)
    msg = str(exc.value)
    assert f"{limit - 10} tokens" in msg and "gen_length 20" in msg and f"at most {limit - 20}" in msg


class _Observer:
    def __init__(self):
        self.events = []

    @hookimpl
    def dllm_generation_start(self, engine, state, config):
        self.events.append(("start", config["gen_length"]))

    @hookimpl
    def dllm_block_start(self, engine, state):
        self.events.append(("block", state.block))

    @hookimpl
    def dllm_block_end(self, engine, state):
        self.events.append(("block_end", state.block))

    @hookimpl
    def dllm_generation_end(self, engine, result):
        self.events.append(("end", result.nfe))


def test_observer_hooks_fire_at_generation_and_block_level(model):
    obs = _Observer()
    eng = Engine(model=model, device="cpu", plugins=[obs])
    res = eng.generate_ids([PROMPTS[0]], gen_length=8, block_length=4)
    assert obs.events == [("start", 8), ("block", 0), ("block_end", 0), ("block", 1), ("block_end", 1),
                          ("end", res.nfe)]


def test_config_round_trip(model):
    eng = Engine(model=model, scheduler="maskgit_plus", scheduler_options={"top_p": 0.9}, device="cpu")
    res = eng.generate_ids([PROMPTS[0]], gen_length=8)
    again = Engine.from_config(res.config, model=model, device="cpu")
    assert again.strategy.config() == eng.strategy.config()
    assert again.generate_ids([PROMPTS[0]], gen_length=8).token_ids == res.token_ids


def test_text_prompts_and_chat_off(tiny_dirs):
    eng = Engine(model=str(tiny_dirs["llada"]), device="cpu")
    res = eng.generate(["w3 w4 w5"], gen_length=8)
    assert isinstance(res.text, str)
    assert eng.encode(["w3 w4 w5"]) == [[3, 4, 5]]


def test_model_dtype_option(tiny_dirs):
    eng = Engine(model=str(tiny_dirs["dream"]), device="cpu", dtype="bf16")
    assert next(eng.model.parameters()).dtype == torch.bfloat16
    assert len(eng.generate_ids([[3, 4]], gen_length=8).token_ids) == 1
    with pytest.raises(OptionError, match="dtype"):
        Engine(model=str(tiny_dirs["dream"]), device="cpu", dtype="int8")
