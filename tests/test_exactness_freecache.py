"""FreeCache (cache ``freecache``) and Guided Diffusion (guide ``ar``) of FlashDLM.

FreeCache with a window covering everything equals full recomputation; narrower windows
recompute exactly ``[last - left, frontier + right)``.  The guide commits every draft when it
agrees everywhere, exactly one (the diffusion model's own left-most draft) when it never agrees,
keeps its KV cache consistent across chunks and steps, and refuses another vocabulary.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from dllm_core import Commit, Engine, ForwardPlan, IncompatibleStrategyError
from dllm_core.testing.helpers import StateRecorder, make_state, tiny_model
from dllm_plugins.ar_guide import ARGuide, vocabulary_mismatch
from strategy_plugins import TinyCausalLM

PROMPTS = [[3, 4, 5, 6, 7], [9, 10]]


def generate(family: str, cache: str = "none", scheduler: str = "low_confidence", *, guide: Any = None,
             cache_options: Any = None, prompts: Any = PROMPTS, **settings: Any) -> tuple[torch.Tensor, Any, Any]:
    rec = StateRecorder()
    engine = Engine(model=tiny_model(family), cache=cache, cache_options=cache_options, scheduler=scheduler,
                    guide=guide, device="cpu", plugins=[rec])
    res = engine.generate_ids(prompts, trace=True, **{"gen_length": 16, "block_length": 8, **settings})
    return rec.generated(), res, rec.state


@functools.lru_cache(maxsize=None)
def reference(family: str, scheduler: str, block_length: int) -> torch.Tensor:
    return generate(family, "none", scheduler, block_length=block_length)[0]


# -- FreeCache ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("scheduler", ["low_confidence", "threshold", "maskgit_plus"])
@pytest.mark.parametrize("options", [{"left": 100000, "right": 100000}, {"left": 100000, "right": 0, "mode": "window"}])
def test_window_covering_everything_equals_no_cache(family: str, scheduler: str, options: dict) -> None:
    for block_length in (8, 16):
        got = generate(family, "freecache", scheduler, cache_options=options, block_length=block_length)[0]
        assert torch.equal(reference(family, scheduler, block_length), got), f"{options}, block {block_length}"


def _plans(family: str, options: dict, **settings: Any) -> list[tuple[int, int, int, int, ForwardPlan]]:
    """(frontier, block_start, block_end, step, plan) of every step of a generation."""
    engine = Engine(model=tiny_model(family), cache="freecache", cache_options=options, device="cpu")
    policy, seen = engine.strategy.cache, []
    plan_fn = policy.plan

    def spy(state: Any) -> ForwardPlan:
        masked = state.masked.clone()
        masked[:, :state.gen_start] = False
        frontier = int(torch.where(masked.any(1), masked.long().argmax(1), state.length).min())
        seen.append((frontier, state.block_start, state.block_end, state.step, plan_fn(state)))
        return seen[-1][-1]

    policy.plan = spy  # type: ignore[method-assign]
    engine.generate_ids(PROMPTS, **{"gen_length": 16, "block_length": 8, **settings})
    return seen


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("block_length", [8, 16])
def test_window_plans(family: str, block_length: int) -> None:
    T = len(PROMPTS[0]) + 16
    plans = _plans(family, {"left": 2, "right": 4, "mode": "window"}, block_length=block_length)
    assert plans[0][-1].is_refresh and all(not p.is_refresh for *_, p in plans[1:])
    for frontier, bs, be, step, plan in plans:
        ws, we = max(0, frontier - 1 - 2), min(T, frontier + 4)
        lp = plan.logit_positions[0].tolist()
        assert lp == list(range(max(bs, frontier), min(be, we)))
        if step:
            assert plan.rows[0].tolist() == list(range(ws, we))
            assert plan.kv_limit == (None if we == T else we)
            hidden = [c - 1 for c in lp] if family == "dream" else lp
            assert set(hidden) <= set(range(ws, we)), "the rows predicting each column are recomputed"


def test_block_mode_recomputes_block_and_suffix_without_refresh() -> None:
    T = len(PROMPTS[0]) + 16
    plans = _plans("llada", {"left": 2, "right": 4})  # auto: LLaDA in blocks, window not covering -> block
    assert plans[0][-1].is_refresh
    for _, bs, _, step, plan in plans[1:]:
        assert not plan.is_refresh, "no refresh at block starts"
        assert plan.rows[0].tolist() == list(range(bs, T)) and plan.kv_limit is None
    assert {bs for _, bs, *_ in plans} == {5, 13}


def test_narrow_window_computes_fewer_rows() -> None:
    _, ref, _ = generate("dream", "none", block_length=16)
    gen, res, _ = generate("dream", "freecache", cache_options={"left": 2, "right": 4}, block_length=16)
    assert not bool((gen == tiny_model("dream").spec.mask_id).any())
    assert sum(t.rows_computed for t in res.trace) < sum(t.rows_computed for t in ref.trace)


# -- the guide ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["none", "freecache"])
def test_guide_that_agrees_commits_every_draft(family: str, cache: str) -> None:
    guide = ARGuide(causal_lm=TinyCausalLM(kind="uniform"))
    _, res, state = generate(family, cache, guide=guide)
    assert res.steps == 2, "one step per block when every draft is accepted"
    for t in res.trace:
        assert t.committed == [list(range(8 * t.block, 8 * t.block + 8))] * 2
    # one guide call per sequence and step (chunk 32 > 8 drafts; the first also feeds the prompt)
    assert state.extras["ar"] == {"forward_calls": 4, "verified": 32, "accepted": 32}
    assert guide.forward_calls == 4


def _left_to_right_greedy(family: str, prompt: list[int], n: int) -> list[int]:
    """Reference: each step commits the argmax at the first masked column of a full forward."""
    model = tiny_model(family)
    x = torch.tensor([prompt + [model.spec.mask_id] * n])
    for i in range(n):
        logits = model.full_logits(x)[0, len(prompt) + i]
        logits[model.spec.mask_id] = float("-inf")
        x[0, len(prompt) + i] = logits.argmax()
    return x[0, len(prompt):].tolist()


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_guide_that_never_agrees_commits_the_first_draft_each_step(family: str) -> None:
    guide = ARGuide(causal_lm=TinyCausalLM(kind="refuse"), acceptance="deterministic")
    gen, res, state = generate(family, "none", guide=guide, prompts=[PROMPTS[0]])
    assert res.steps == 16 and all(t.committed == [[t.step]] for t in res.trace)
    assert gen[0].tolist() == _left_to_right_greedy(family, PROMPTS[0], 16)
    assert state.extras["ar"]["accepted"] == 0


def test_verify_stops_after_eos_and_falls_back_without_a_frontier_draft() -> None:
    state = make_state((3, 5), gen_length=8, masked=[[False, False] + [True] * 6, [True] * 8])
    gs = state.gen_start
    guide = ARGuide(causal_lm=TinyCausalLM(vocab=32, kind="uniform"))
    guide.prepare(state, tiny_model("llada"), None)
    positions = torch.arange(gs + 1, gs + 8).expand(2, -1)  # row 1's first mask (gs) has no draft
    tokens = torch.full((2, 7), 5)
    tokens[0, 3] = state.eos_id                               # column gs + 4
    cands = state.x.gather(1, positions) == state.mask_id
    sched_mask = torch.zeros(2, 7, dtype=torch.bool)
    sched_mask[1, 5] = True
    commit = Commit(positions=positions, tokens=tokens, confidence=torch.zeros(2, 7), mask=sched_mask,
                    candidates=cands)
    out = guide.verify(state, commit)
    assert out.positions[0][out.mask[0]].tolist() == [gs + 2, gs + 3, gs + 4], "accepted run ends at the EOS"
    assert torch.equal(out.mask[1], sched_mask[1]), "no draft at the frontier: the scheduler's commit stays"


def test_acceptance_rules() -> None:
    lg = torch.full((3, 8), -5.0)
    lg[0, :2] = torch.tensor([2.0, 1.9])   # draft 1: top-2 and p = 0.90 max p
    lg[1, :2] = torch.tensor([2.0, 1.0])   # draft 1: top-2 but p = 0.37 max p
    lg[2, :3] = torch.tensor([2.0, 1.9, 1.8])  # draft 2: third most likely
    rel = ARGuide(causal_lm=TinyCausalLM(vocab=8), acceptance="topk_relative")
    det = ARGuide(causal_lm=TinyCausalLM(vocab=8), acceptance="deterministic")
    assert rel._accept(lg, [1, 1, 2]) == [True, False, False]
    assert rel._accept(lg, [0, 0, 0]) == [True, True, True]
    assert det._accept(lg, [1, 0, 0]) == [False, True, True]
    assert det._accept(lg, [9, 0, 0]) == [False, True, True], "ids the guide cannot produce are rejected"


def test_guide_kv_cache_matches_full_recomputation_across_chunks() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128)).eval()

    def greedy(prefix: list[int], n: int) -> list[int]:
        ids = list(prefix)
        with torch.no_grad():
            for _ in range(n):
                ids.append(int(lm(torch.tensor([ids])).logits[0, -1].argmax()))
        return ids[len(prefix):]

    guide = ARGuide(causal_lm=lm, chunk=4, acceptance="deterministic")
    guide.prepare(make_state((3,), gen_length=4), tiny_model("llada"), None)
    rc = guide._rows[0]
    with torch.no_grad():
        prefix = [5, 9, 17, 3]
        drafts = greedy(prefix, 10)
        drafts[6] = (drafts[6] + 1) % 128                      # rejected at draft 6, in the second chunk
        assert guide.verify_row(rc, prefix, drafts) == 6
        prefix += drafts[:6]
        assert rc.ids == prefix[:-1] and rc.past.get_seq_length() == len(prefix) - 1
        drafts = greedy(prefix, 9)                             # all 9 accepted over three chunks
        assert guide.verify_row(rc, prefix, drafts) == 9
        prefix += drafts
        drafts = [(greedy(prefix, 1)[0] + 1) % 128, 7]         # nothing accepted: the first draft commits
        assert guide.verify_row(rc, prefix, drafts) == 1
        prefix += drafts[:1]
        assert rc.ids == prefix[:-1] and rc.past.get_seq_length() == len(prefix) - 1
        assert guide.verify_row(rc, prefix, greedy(prefix, 5)) == 5


# -- vocabularies ------------------------------------------------------------------------------------

class _Vocab:
    def __init__(self, words: dict[str, int]) -> None:
        self.words = words

    def get_vocab(self) -> dict[str, int]:
        return dict(self.words)


def test_vocabulary_check() -> None:
    diffusion = _Vocab({"a": 0, "b": 1, "c": 2, "<|mask|>": 3})
    assert vocabulary_mismatch(_Vocab({"a": 0, "b": 1, "c": 2}), diffusion, 3, 4) is None
    why = vocabulary_mismatch(_Vocab({"a": 0, "c": 1, "b": 2}), diffusion, 3, 4)
    assert "guide token 'c' (id 1) has id 2 in the diffusion tokenizer" in why
    why = vocabulary_mismatch(_Vocab({"a": 0, "z": 1}), diffusion, 2, 4)
    assert "guide token 'z' (id 1) is missing from the diffusion tokenizer" in why
    assert "size 100 differs from the diffusion model's 128" in vocabulary_mismatch(None, None, 100, 128)
    assert vocabulary_mismatch(None, diffusion, 128, 128) is None


def test_engine_refuses_a_guide_with_another_vocabulary() -> None:
    words = {f"w{i}": i for i in range(128)}
    swapped = {**words, "w5": 6, "w6": 5}
    engine = Engine(model=tiny_model("llada"), guide=ARGuide(causal_lm=TinyCausalLM(), tokenizer=_Vocab(swapped)),
                    tokenizer=_Vocab(words), device="cpu")
    with pytest.raises(IncompatibleStrategyError, match=r"guide 'ar': .*guide token 'w6' \(id 5\) has id 6"):
        engine.generate_ids(PROMPTS, gen_length=8)
    engine = Engine(model=tiny_model("llada"), guide="ar", device="cpu")
    with pytest.raises(IncompatibleStrategyError, match="option 'model' is required"):
        engine.generate_ids(PROMPTS, gen_length=8)
