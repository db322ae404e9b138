"""Fast-dLLM: caches ``prefix`` / ``dual`` and schedulers ``threshold`` / ``factor``.

Exactness backbone: with ``refresh_every=1`` both caches equal full recomputation token for
token; ``threshold`` above 1 is one-token-per-step low-confidence decoding.  The selection rules
are checked on hand-made confidences (ties, batches, block edges, the factor quirk).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch

from dllm_core import Engine, ForwardPlan
from dllm_core.testing.helpers import StateRecorder, candidates_of, make_output, make_state, tiny_model

PROMPTS = [[3, 4, 5, 6, 7], [9, 10]]


def generate(family: str, cache: str = "none", scheduler: str = "low_confidence", *, cache_options: Any = None,
             scheduler_options: Any = None, **settings: Any) -> tuple[torch.Tensor, Any]:
    rec = StateRecorder()
    engine = Engine(model=tiny_model(family), cache=cache, cache_options=cache_options, scheduler=scheduler,
                    scheduler_options=scheduler_options, device="cpu", plugins=[rec])
    res = engine.generate_ids(PROMPTS, trace=True, **{"gen_length": 16, "block_length": 8, **settings})
    return rec.generated(), res


@functools.lru_cache(maxsize=None)
def reference(family: str, scheduler: str, block_length: int, steps: int | None = None) -> torch.Tensor:
    """Tokens of full recomputation (cache "none"), computed once per setting."""
    return generate(family, "none", scheduler, block_length=block_length, steps=steps)[0]


# -- exactness against cache "none" ------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("scheduler", ["low_confidence", "threshold", "factor", "maskgit_plus"])
def test_refresh_every_step_equals_no_cache(family: str, cache: str, scheduler: str) -> None:
    for settings in ({"block_length": 8}, {"block_length": 16, "steps": 8}):
        got, _ = generate(family, cache, scheduler, cache_options={"refresh_every": 1}, **settings)
        assert torch.equal(reference(family, scheduler, **settings), got), \
            f"{cache} refresh_every=1 differs from none with {settings}"


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_threshold_above_one_is_one_token_per_step_low_confidence(family: str) -> None:
    ref, ref_res = generate(family, "none", "low_confidence", steps=16)
    got, res = generate(family, "none", "threshold", scheduler_options={"threshold": 1.5})
    assert torch.equal(ref, got)
    assert res.steps == ref_res.steps == 16
    assert all(len(c) == 1 for t in res.trace for c in t.committed)


# -- the caches at their default settings --------------------------------------------------------------

@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_default_caches_run_and_compute_fewer_rows(family: str, cache: str) -> None:
    _, ref = generate(family, "none", "threshold")
    gen, res = generate(family, cache, "threshold")
    assert not bool((gen == tiny_model(family).spec.mask_id).any())
    rows = sum(t.rows_computed for t in res.trace)
    assert rows < sum(t.rows_computed for t in ref.trace)
    T = len(PROMPTS[0]) + 16
    refreshes = [t for t in res.trace if t.rows_computed == T]
    assert len(refreshes) == 2, "one full refresh per block"
    cached = {t.rows_computed for t in res.trace if t.rows_computed != T}
    if cache == "dual":
        assert cached <= {8, 9}, "dual recomputes the block (Dream fallback: plus the row before it)"
    if family == "dream":
        # the block-start refresh decodes exactly the block's first column
        for t in refreshes:
            assert all(c == [8 * t.block] for c in t.committed), t.committed


def _recorded_plans(family: str, cache: str, **settings: Any) -> list[tuple[int, int, ForwardPlan]]:
    engine = Engine(model=tiny_model(family), cache=cache, scheduler="threshold", device="cpu")
    policy, seen = engine.strategy.cache, []
    plan_fn = policy.plan

    def spy(state: Any) -> ForwardPlan:
        plan = plan_fn(state)
        seen.append((state.block_start, state.block_end, plan))
        return plan

    policy.plan = spy  # type: ignore[method-assign]
    engine.generate_ids(PROMPTS, gen_length=16, block_length=8, **settings)
    return seen


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_steps_recompute_the_right_rows(family: str, cache: str) -> None:
    T = len(PROMPTS[0]) + 16
    for bs, be, plan in _recorded_plans(family, cache):
        if plan.is_refresh:
            continue
        rows = plan.rows[0].tolist()
        lo = rows[0]
        assert rows == list(range(lo, T if cache == "prefix" else be))
        assert lo in (bs, bs - 1) and (lo == bs or family == "dream")
        if family == "dream" and lo == bs:
            assert plan.logit_positions[0].tolist() == list(range(bs + 1, be))
        assert bool((plan.rows[1] == plan.rows[0]).all()), "every sequence recomputes the same columns"


def test_refresh_every_k_adds_periodic_refreshes() -> None:
    assert sum(p.is_refresh for _, _, p in _recorded_plans("llada", "dual")) == 2  # default: block starts only
    engine = Engine(model=tiny_model("llada"), cache="dual", cache_options={"refresh_every": 2},
                    scheduler="threshold", scheduler_options={"threshold": 2.0}, device="cpu")
    res = engine.generate_ids(PROMPTS, gen_length=16, block_length=8, trace=True)
    T = len(PROMPTS[0]) + 16
    assert [t.rows_computed == T for t in res.trace] == [i % 2 == 0 for i in range(8)] * 2


# -- hand-made confidences ---------------------------------------------------------------------------

def _logits(conf: list[list[float]], vocab: int = 4) -> torch.Tensor:
    """(B, r, vocab) logits whose argmax is token 0 with probability ``conf`` (> 1 / vocab)."""
    c = torch.tensor(conf, dtype=torch.float64)
    rest = ((1 - c) / (vocab - 1)).unsqueeze(-1).expand(*c.shape, vocab - 1)
    return torch.cat([c.unsqueeze(-1), rest], -1).log().float()


def _select(name: str, conf: list[list[float]], masked: Any = None, **options: Any) -> torch.Tensor:
    from dllm_core.testing.helpers import build_component

    B = len(conf)
    state = make_state((3,) * B, gen_length=len(conf[0]) * 2, block_length=len(conf[0]), block=1,
                       masked=masked)
    out = make_output(state, _logits(conf))
    cands = candidates_of(state, out.positions)
    sched = build_component("scheduler", name, options)
    commit = sched.select(state, out, cands)
    assert torch.equal(commit.tokens[cands], torch.zeros_like(commit.tokens[cands]))
    return commit.mask


def test_threshold_commit_sets() -> None:
    conf = [[0.95, 0.5, 0.9, 0.89],   # >= tau: 0 and 2 (0.9 itself counts)
            [0.6, 0.6, 0.3, 0.3],     # none reaches tau: the top one only, tie -> lower column
            [0.99, 0.99, 0.99, 0.99],  # every candidate, but column 1 and 3 are not masked
            [0.97, 0.4, 0.3, 0.5]]     # nothing masked in the block: no commit
    masked = [[True] * 8, [True] * 8, [True] * 4 + [True, False, True, False], [True] * 4 + [False] * 4]
    mask = _select("threshold", conf, masked)
    assert mask.tolist() == [[True, False, True, False], [True, False, False, False],
                             [True, False, True, False], [False] * 4]
    one = _select("threshold", conf, masked, threshold=1.01)
    assert one.sum(1).tolist() == [1, 1, 1, 0]


def test_factor_commit_sets_and_the_quirk() -> None:
    from dllm_plugins.fast_dllm.factor import factor_counts

    def count(c: list[float], f: float = 1.0) -> int:
        s = torch.tensor([c])
        return int(factor_counts(s, torch.isfinite(s), f)[0])

    # thresholds for f = 1: n=2 -> 2/3, n=3 -> 3/4, n=4 -> 4/5, n=5 -> 5/6
    assert count([0.99, 0.9, 0.8, 0.82, 0.1, 0.05]) == 4  # sorted .99 .9 .82 .8 pass; n=5 fails (of 6): 4
    assert count([0.99, 0.9, 0.8, 0.82, 0.1]) == 5        # quirk: the first failure is the last candidate
    assert count([0.99, 0.9, 0.5]) == 3                    # quirk: first failure at the last candidate
    assert count([0.99, 0.9, 0.5, 0.4]) == 2
    assert count([0.3, 0.2]) == 2                          # quirk again: c_(2) fails but is the last
    assert count([0.3, 0.2, 0.1]) == 1                     # c_(1) always; c_(2) fails, not the last
    assert count([0.4]) == 1                               # a single candidate is always committed
    assert count([0.99, 0.99, 0.99, 0.99]) == 4            # no failure: all
    assert count([0.9, 0.7, 0.1], f=0.5) == 1              # 3 (1 - 0.7) = 0.9 > 0.5
    assert count([0.9, 0.85, 0.1, 0.05], f=0.5) == 2       # 3 * 0.15 = 0.45 <= 0.5
    # off-candidate entries (-inf) never count, and rows are independent
    s = torch.tensor([[0.99, 0.9, 0.5, -math.inf], [-math.inf] * 4, [0.2, -math.inf, 0.99, 0.98]])
    assert factor_counts(s, torch.isfinite(s), 1.0).tolist() == [3, 0, 3]


def test_factor_scheduler_commits_the_top_run() -> None:
    conf = [[0.5, 0.99, 0.9, 0.3], [0.6, 0.6, 0.3, 0.3]]  # sorted: .99 .9 .5 .3 -> 2;  .6 .6 .3 .3 -> 1
    mask = _select("factor", conf)
    assert mask.tolist() == [[False, True, True, False], [True, False, False, False]]
    conf = [[0.99, 0.9, 0.5, 0.97]]  # block edge: column 3 not masked -> 3 candidates, quirk commits all 3
    mask = _select("factor", conf, [[True] * 4 + [True, True, True, False]])
    assert mask.tolist() == [[True, True, True, False]]
