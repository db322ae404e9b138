"""d2Cache: cache policy ``d2cache`` and scheduler ``certainty_prior``.

Exactness (k covering every mask, p = 1 recomputes every row, so it must equal cache ``none``),
the rollout vector chain against the dense matrix chain, the nucleus rule, the row-set
composition on hand-made states, and the scheduler's commit sets.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import pytest
import torch

from dllm_core import (Commit, DecodeState, Engine, ForwardOutput, GraphedFunction, OptionError, Registry,
                       make_plugin_manager)
from dllm_core.cuda_graphs import pad_columns
from dllm_core.testing.tiny import make_tiny_model
import dllm_plugins.d2cache as d2cache_plugin
from dllm_plugins.certainty_prior import CertaintyPrior, certainty_prior_commit
from dllm_plugins.d2cache.cache import ANCHOR, D2Cache, select_rows
from dllm_plugins.d2cache.nucleus import inflate_gaps, nucleus_select, rows_from_mask, rows_from_mask_padded
from dllm_plugins.d2cache.rollout import rollout_influence, rollout_influence_dense, rollout_influence_padded

PROMPTS = [[3, 4, 5, 6, 7], [9, 10]]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny matmuls are dominated by thread start-up on busy machines
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def plugins():
    """The d2cache plugin, unless the installed entry points already provide it."""
    names = Registry.from_plugin_manager(make_plugin_manager()).names("cache")
    return [] if "d2cache" in names else [d2cache_plugin]


@pytest.fixture(scope="module", params=["llada", "dream"])
def model(request):
    return make_tiny_model(request.param)


def _state(masked: list[list[bool]], prompt: int = 3, block_length: int | None = None, block: int = 0,
           shifted: bool = False, last_commit: list[list[int]] | None = None) -> DecodeState:
    B, G = len(masked), len(masked[0])
    T = prompt + G
    x = torch.full((B, T), 5, dtype=torch.long)
    x[:, prompt:][torch.tensor(masked)] = 99
    st = DecodeState(x=x, valid=torch.ones(B, T, dtype=torch.bool), positions=torch.arange(T).expand(B, T),
                     gen_start=prompt, gen_length=G, block_length=block_length or G, mask_id=99, eos_id=1,
                     shifted_logits=shifted, block=block)
    if last_commit is not None:
        st.last_commit = torch.zeros(B, T, dtype=torch.bool)
        for b, cols in enumerate(last_commit):
            st.last_commit[b, cols] = True
    return st


def _cols(mask: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(r).flatten().tolist() for r in mask]


# -- exactness ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scheduler", ["low_confidence", "certainty_prior"])
@pytest.mark.parametrize("block_length", [None, 8])
def test_exact_configuration_equals_no_cache(model, plugins, scheduler, block_length):
    ref = Engine(model=model, cache="none", scheduler=scheduler, device="cpu", plugins=plugins)
    exact = Engine(model=model, cache="d2cache", scheduler=scheduler, device="cpu", plugins=plugins,
                   cache_options={"k": 64, "p": 1.0})
    a = ref.generate_ids(PROMPTS, gen_length=24, block_length=block_length)
    b = exact.generate_ids(PROMPTS, gen_length=24, block_length=block_length, trace=True)
    assert a.token_ids == b.token_ids
    T = len(PROMPTS[0]) + 24
    assert all(t.rows_computed == T for t in b.trace)  # every row recomputed every step


def test_default_runs_and_computes_fewer_rows(model, plugins):
    eng = Engine(model=model, cache="d2cache", scheduler="certainty_prior", device="cpu", plugins=plugins)
    res = eng.generate_ids([[3, 4, 5]], gen_length=48, trace=True)
    T = 3 + 48
    rows = [t.rows_computed for t in res.trace]
    assert res.steps == 48 and rows[0] == T  # NAR, one token per step, step 0 refreshes
    assert max(rows[1:]) < T and sum(rows) < 0.85 * 48 * T
    assert sorted(c for t in res.trace for c in t.committed[0]) == list(range(48))
    assert eng.generate_ids([[3, 4, 5]], gen_length=48).token_ids == res.token_ids  # deterministic


def test_options_are_validated(plugins):
    with pytest.raises(OptionError):
        D2Cache(stage1_confidence="latest")
    with pytest.raises(OptionError):
        D2Cache(p=0.0)
    assert D2Cache().options.to_dict() == {"k": 32, "p": 0.1, "sigma": 10.0, "stage1_confidence": "current",
                                           "inflate_w": 0}


# -- rollout and nucleus -----------------------------------------------------------------------

@pytest.mark.parametrize("q", [1, 5, 12])
def test_rollout_vector_chain_equals_dense_chain(q):
    g = torch.Generator().manual_seed(q)
    B, T, L = 3, 12, 4
    rows = torch.stack([torch.randperm(T, generator=g)[:q] for _ in range(B)])
    attn = [torch.softmax(torch.randn(B, q, T, generator=g, dtype=torch.float64) * 2, -1) for _ in range(L)]
    attn[1] = attn[1] * 0.7  # rows that do not sum to 1 (padding keys) are normalised too
    start = torch.rand(B, T, generator=g, dtype=torch.float64)
    for s in (torch.ones_like(start), start):
        fast = rollout_influence(attn, rows, s)
        dense = rollout_influence_dense(attn, rows, s)
        assert torch.allclose(fast, dense, rtol=0, atol=1e-10)
    # column sums of a product of row-stochastic matrices keep the total mass
    assert torch.allclose(rollout_influence(attn, rows, torch.ones(B, T, dtype=torch.float64)).sum(1),
                          torch.full((B,), float(T), dtype=torch.float64))


def test_nucleus_rule():
    allowed = torch.ones(1, 4, dtype=torch.bool)
    s = torch.tensor([[1.0, 5.0, 3.0, 1.0]])  # masses 0.1 0.5 0.3 0.1
    assert _cols(nucleus_select(s, 0.5, allowed)) == [[1]]        # exactly p is kept
    assert _cols(nucleus_select(s, 0.79, allowed)) == [[1]]       # stop before crossing p
    assert _cols(nucleus_select(s, 0.8 + 1e-6, allowed)) == [[1, 2]]
    assert _cols(nucleus_select(s, 0.1, allowed)) == [[1]]        # at least one
    assert _cols(nucleus_select(s, 0.95, allowed)) == [[0, 1, 2]]  # tie of 0.1: lower column first
    assert _cols(nucleus_select(s, 1.0, allowed)) == [[0, 1, 2, 3]]
    # disallowed columns neither count nor get picked; masses renormalise over the allowed ones
    not1 = torch.tensor([[True, False, True, True]])
    assert _cols(nucleus_select(s, 0.6, not1)) == [[2]]           # 0.6 of {2}, 0.2 each other
    assert _cols(nucleus_select(s, 0.81, not1)) == [[0, 2]]
    assert _cols(nucleus_select(s, 0.5, torch.zeros(1, 4, dtype=torch.bool))) == [[]]


def test_inflate_and_top_up():
    sel = torch.tensor([[0, 1, 0, 0, 1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert _cols(inflate_gaps(sel, 3)) == [[1, 2, 3, 4, 9]]
    assert torch.equal(inflate_gaps(sel, 0), sel)
    selected = torch.tensor([[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    tier = torch.tensor([[0, 1, 1, 2, 2, 2], [0, 1, 1, 2, 2, 2]])
    score = torch.tensor([[0.0, 0.3, 0.9, 0.2, 0.4, 0.1], [0.0, 0.3, 0.9, 0.2, 0.4, 0.1]])
    rows = rows_from_mask(selected, tier, score, 3)
    # row 0: its two, then the best masked (tier 2) column; row 1: its one, then masked 4 and 3
    assert rows.tolist() == [[0, 4, 5], [1, 3, 4]]


# -- row sets on hand-made states --------------------------------------------------------------

def test_stage_composition_dream_shift_and_last_prompt_column():
    # prompt columns 0..2, generated 3..10; generated offsets 2 and 5 are known
    st = _state([[True, True, False, True, True, False, True, True]], shifted=True, last_commit=[[8]])
    conf = torch.tensor([[0.9, 0.1, 0.0, 0.8, 0.1, 0.0, 0.1, 0.1]])
    infl = torch.tensor([[1.0, 3.0, 9.0] + [1.0] * 8])  # column 2 is taken by S1 already, 1 is next
    sel = select_rows(st, conf, infl, k=2, p=0.05, sigma=10.0)
    assert sel.stage1.tolist() == [[3, 6]]               # predictions wanted for offsets 0 and 3
    assert _cols(sel.stage1_rows) == [[2, 5]]            # Dream: their predecessor rows (2 = last prompt)
    assert _cols(sel.stage2) == [[8]]
    assert _cols(sel.stage3) == [[1]]
    assert _cols(sel.rows) == [[1, 2, 5, 8]]
    llada = _state([[True, True, False, True, True, False, True, True]], last_commit=[[8]])
    sel = select_rows(llada, conf, infl, k=2, p=0.05, sigma=10.0)
    assert _cols(sel.stage1_rows) == [[3, 6]] and _cols(sel.rows) == [[2, 3, 6, 8]]


def test_unused_logit_slots_reuse_a_recomputed_row():
    masked = [[True, True, False, True, True, False, True, True]]
    infl = torch.tensor([[1.0, 5.0] + [1.0] * 9])
    # LLaDA: the slots repeat the first non-candidate column among the rows (S3 picked column 1)
    sel = select_rows(_state(masked, last_commit=[[5]]), torch.full((1, 8), 0.5), infl, k=8, p=0.05, sigma=10.0)
    assert sel.stage1.tolist() == [[3, 4, 6, 7, 9, 10, 1, 1]]
    assert sel.stage1_valid.tolist() == [[True] * 6 + [False] * 2]
    assert _cols(sel.rows) == [[1, 3, 4, 5, 6, 7, 9, 10]]
    # Dream: column 2 is not a candidate and its predecessor row 1 is recomputed
    sel = select_rows(_state(masked, shifted=True, last_commit=[[5]]), torch.full((1, 8), 0.5), infl, k=8,
                      p=0.05, sigma=10.0)
    assert sel.stage1.tolist() == [[3, 4, 6, 7, 9, 10, 2, 2]]
    assert _cols(sel.rows) == [[1, 2, 3, 5, 6, 8, 9]]
    # Dream with no such column (S3 took the last column, which predicts nothing): ANCHOR is added
    sel = select_rows(_state([[True, True, False]], shifted=True), torch.full((1, 3), 0.5),
                      torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 9.0]]), k=4, p=0.05, sigma=10.0)
    assert sel.stage1.tolist() == [[3, 4, ANCHOR]]
    assert _cols(sel.rows) == [[ANCHOR, 2, 3, 5]]


def test_stage1_blocks_come_first():
    # blocks of 2, current block 1 (offsets 2..3) holds one mask; k=2 extends the search to the
    # boundary after the 2nd mask (offset 4 -> end 6): offsets 6, 7 are out despite high confidence
    st = _state([[False, False, False, True, True, True, True, True]], block_length=2, block=1)
    conf = torch.tensor([[0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 1.0, 1.0]])
    sel = select_rows(st, conf, torch.ones(1, 11), k=2, p=0.05, sigma=10.0)
    assert sel.stage1.tolist() == [[6, 8]]               # offset 3 (in block) first, then offset 5


def _logits_for(conf: torch.Tensor, V: int = 8) -> torch.Tensor:
    """Logits whose max probability is ``conf`` (token 0), the rest spread over tokens 1..V-2."""
    rest = ((1 - conf) / (V - 2)).log().unsqueeze(-1).expand(*conf.shape, V).clone()
    rest[..., 0] = conf.log()
    rest[..., V - 1] = float("-inf")
    return rest


def _step(cache: D2Cache, st: DecodeState, conf_of: dict[int, float]) -> list[int]:
    """Plan, fake a forward giving column c the confidence conf_of[c] (default 0.2), observe."""
    plan = cache.plan(st)
    rows = plan.rows if plan.rows is not None else torch.arange(st.length).unsqueeze(0)
    pos = plan.logit_positions
    conf = torch.tensor([[conf_of.get(int(c), 0.2) for c in pos[0]]])
    attn = [torch.full((1, rows.shape[1], st.length), 1.0 / st.length)]
    out = ForwardOutput(logits=_logits_for(conf), positions=pos, rows=rows, attention=attn)
    none = torch.zeros_like(pos, dtype=torch.bool)
    cache.observe(st, plan, out, Commit(pos, torch.zeros_like(pos), conf, none, none))
    st.last_commit = torch.zeros_like(st.x, dtype=torch.bool)
    return [int(c) for c, ok in zip(pos[0], (pos[0] >= st.gen_start)) if ok]


def test_stage1_confidence_current_vs_step0():
    picks = {}
    for mode in ("current", "step0"):
        st = _state([[True] * 4], prompt=2)
        cache = D2Cache(k=1, p=0.5, stage1_confidence=mode)
        cache.prepare(st)
        _step(cache, st, {3: 0.95})                 # step 0: column 3 far more confident
        assert _step(cache, st, {3: 0.01}) == [3]   # step 1 predicts column 3 again: now unsure
        picks[mode] = _step(cache, st, {})
    assert picks == {"current": [2], "step0": [3]}   # step0 still trusts the step-0 confidence


# -- certainty_prior scheduler -----------------------------------------------------------------

def _commit(st, positions, conf, cand, **kw):
    mask, scores = certainty_prior_commit(st, torch.tensor(positions), torch.tensor(conf), torch.tensor(cand), **kw)
    return [[int(p) for p, m in zip(pr, mr) if m] for pr, mr in zip(positions, mask.tolist())], scores


def test_certainty_prior_ties_density_and_threshold():
    st = _state([[True] * 6], prompt=2)
    pos, cand = [[2, 3, 4, 5, 6, 7]], [[True] * 6]
    assert _commit(st, pos, [[0.5] * 6], cand, tokens_per_step=1, sigma=0.0)[0] == [[2]]  # tie -> lower
    assert _commit(st, pos, [[0.5] * 6], cand, tokens_per_step=2, sigma=10.0)[0] == [[2, 3]]
    conf = [[0.5, 0.5, 0.5, 0.5, 0.9, 0.5]]
    assert _commit(st, pos, conf, cand, tokens_per_step=1, sigma=0.0)[0] == [[6]]   # plain confidence
    assert _commit(st, pos, conf, cand, tokens_per_step=1, sigma=1.0)[0] == [[2]]   # next to the prompt
    got, scores = _commit(st, pos, conf, cand, tokens_per_step=1, sigma=0.0, threshold=0.5)
    assert got == [[2, 3, 4, 5, 6, 7]] and torch.equal(scores, torch.tensor(conf))
    assert _commit(st, pos, conf, cand, tokens_per_step=1, sigma=0.0, threshold=0.6)[0] == [[6]]


def test_certainty_prior_blocks_batches_and_slot_order():
    # blocks of 3, block 1 current; row 0 has offsets 0..2 known, row 1 only offset 0 known
    st = _state([[False, False, False, True, True, True], [False, True, True, True, True, True]],
                prompt=2, block_length=3, block=1)
    # shuffled slots, an out-of-block masked column and anchor padding: none may be committed
    pos = [[7, 5, 0, 6, 3], [6, 5, 0, 7, 3]]
    conf = [[0.9, 0.6, 1.0, 0.5, 1.0], [0.9, 0.6, 1.0, 0.5, 1.0]]
    cand = [[True, True, False, True, False], [True, True, False, True, False]]
    got, scores = _commit(st, pos, conf, cand, tokens_per_step=1, sigma=1.0)
    assert got == [[5], [5]]                       # the block column next to known text
    assert math.isinf(scores[0, 2]) and scores[0, 2] < 0
    got, _ = _commit(st, pos, conf, cand, tokens_per_step=2, sigma=0.0)
    assert got == [[7, 5], [6, 5]]                 # plain confidence, in slot order
    few = [[True, False, False, False, False], [False, False, False, False, False]]
    assert _commit(st, pos, conf, few, tokens_per_step=4, sigma=10.0)[0] == [[7], []]


def test_certainty_prior_select_uses_logits():
    st = _state([[True] * 4], prompt=2)
    pos = torch.tensor([[2, 3, 4, 5]])
    logits = _logits_for(torch.tensor([[0.3, 0.3, 0.9, 0.3]]))
    out = ForwardOutput(logits=logits, positions=pos, rows=torch.arange(6).unsqueeze(0))
    cand = torch.ones_like(pos, dtype=torch.bool)
    c = CertaintyPrior(sigma=0.0).select(st, out, cand)
    assert c.mask.tolist() == [[False, False, True, False]] and c.tokens.tolist() == [[0, 0, 0, 0]]
    c = CertaintyPrior(sigma=1.0, tokens_per_step=2).select(st, out, cand)
    assert c.mask.tolist() == [[True, True, False, False]]


# -- per-step work on fixed shapes and from CUDA graphs ------------------------------------------

@pytest.mark.parametrize("q, width", [(1, 1), (1, 16), (5, 5), (5, 16), (12, 12)])
def test_padded_rollout_equals_dense_chain(q, width):
    """The q-space chain on stacked rows padded to a bucket (padding rows hold other finite values)."""
    g = torch.Generator().manual_seed(q + width)
    B, T, L = 3, 16, 4
    rows = torch.stack([torch.randperm(T, generator=g)[:q] for _ in range(B)])
    attn = [torch.softmax(torch.randn(B, q, T, generator=g, dtype=torch.float64) * 2, -1) for _ in range(L)]
    attn[2] = attn[2] * 0.6
    stacked = torch.rand(B, L, width, T, generator=g, dtype=torch.float64)
    stacked[:, :, :q] = torch.stack(attn, dim=1)
    start = torch.rand(B, T, generator=g, dtype=torch.float64)
    for s in (torch.ones_like(start), start):
        got = rollout_influence_padded(stacked, pad_columns(rows, width), s)
        assert torch.allclose(got, rollout_influence_dense(attn, rows, s), rtol=0, atol=1e-10)
    valid = torch.rand(B, T, generator=g) > 0.2  # bool start: float32 result, as d2Cache uses it
    got = rollout_influence_padded(stacked.float(), pad_columns(rows, width), valid)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, rollout_influence([a.float() for a in attn], rows, valid.float()))


@pytest.mark.parametrize("q, width", [(1, 1), (3, 16), (7, 8), (20, 20)])
def test_rows_from_mask_padded_extends_rows_from_mask(q, width):
    g = torch.Generator().manual_seed(q)
    B, T = 4, 20
    selected = torch.rand(B, T, generator=g) > 0.8
    selected[:, 0] = False
    tier = torch.randint(1, 4, (B, T), generator=g)
    score = torch.randn(B, T, generator=g).round(decimals=1)  # ties
    q = max(q, int(selected.sum(1).max()))
    width = max(width, q)
    got = rows_from_mask_padded(selected, tier, score, torch.tensor(q), width)
    want = rows_from_mask(selected, tier, score, q)
    assert torch.equal(got, pad_columns(want, width))


def _generate(eng, prompts, graphs: bool, **settings):
    """Generate with ``DecodeState.cuda_graphs`` forced to ``graphs`` (CPU engines refuse the option)."""
    make = Engine._initial_state.__get__(eng)
    eng._initial_state = lambda *a: dataclasses.replace(make(*a), cuda_graphs=graphs)
    try:
        return eng.generate_ids(prompts, trace=True, **settings)
    finally:
        del eng._initial_state


@pytest.mark.parametrize("opts, block_length", [({}, None), ({"k": 3, "p": 0.3}, 8),
                                                ({"k": 6, "p": 0.5, "inflate_w": 3}, None),
                                                ({"k": 2, "p": 0.2, "stage1_confidence": "step0"}, 8)])
def test_static_buffer_path_gives_the_same_tokens(model, plugins, monkeypatch, opts, block_length):
    """With graphs "on", every per-step function runs on static buffers that the next call of its
    shape overwrites (simulated on CPU): same rows and tokens as the eager path."""
    import dllm_plugins.d2cache.cache as cache_module

    monkeypatch.setattr(cache_module, "GraphedFunction", functools.partial(GraphedFunction, simulate=True))
    eng = Engine(model=model, cache="d2cache", scheduler="certainty_prior", device="cpu", plugins=plugins,
                 cache_options=opts)
    prompts = [[3, 4, 5, 6, 7, 8, 9], [9, 10], [11, 12, 13, 14]]
    settings = {"gen_length": 24, "block_length": block_length}
    for batch in (prompts, prompts[1:2], prompts):
        eager = _generate(eng, batch, False, **settings)
        c = eng.strategy.cache
        fns = (c._select, c._rows, c._rollout)
        before = [f.stats["eager_calls"] for f in fns]
        graphed = _generate(eng, batch, True, **settings)
        assert [f.stats["eager_calls"] for f in fns] == before  # every call on static buffers
        assert graphed.token_ids == eager.token_ids
        assert [t.rows_computed for t in graphed.trace] == [t.rows_computed for t in eager.trace]
    assert all(f.stats["replays"] > 0 for f in fns)
    assert c._select.num_graphs == 2  # one per (B, T), kept across generations


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("scheduler", ["low_confidence", "certainty_prior"])
@pytest.mark.parametrize("opts, block_length", [({}, None), ({"k": 4, "p": 0.3}, 16),
                                                ({"k": 8, "p": 0.5, "inflate_w": 3}, None),
                                                ({"k": 2, "stage1_confidence": "step0"}, 16)])
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_cuda_graphs_give_identical_tokens(family, plugins, scheduler, opts, block_length):
    """Engine(cuda_graphs=True) replays d2Cache's per-step work (and the forward) from graphs;
    Engine(cuda_graphs=False) runs all of it eagerly; greedy tokens and row counts agree."""
    m = make_tiny_model(family).cuda()
    kw = {"cache": "d2cache", "scheduler": scheduler, "device": "cuda", "plugins": plugins, "cache_options": opts}
    eager, graphed = Engine(model=m, **kw), Engine(model=m, cuda_graphs=True, **kw)
    prompts = [[3, 4, 5, 6, 7, 8, 9], [9, 10], [11, 12, 13, 14]]
    settings = {"gen_length": 48, "block_length": block_length, "trace": True}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no capture may fail
        for batch in (prompts, prompts[:1], prompts):  # the third run replays the first one's graphs
            a, b = eager.generate_ids(batch, **settings), graphed.generate_ids(batch, **settings)
            assert b.token_ids == a.token_ids
            assert [t.rows_computed for t in b.trace] == [t.rows_computed for t in a.trace]
    c = graphed.strategy.cache
    fns = [c._select, c._rows, c._rollout] + ([c._update] if opts.get("stage1_confidence") != "step0" else [])
    for f in fns:
        assert f.stats["replays"] > 0 and f.stats["eager_calls"] == 0, (f.name, f.stats)
    assert c._select.num_graphs == 2 and c._rows.num_graphs <= 12  # buckets, not one graph per row count
    e = eager.strategy.cache
    assert all(f.stats["captures"] == 0 and f.stats["eager_calls"] > 0 for f in (e._select, e._rows, e._rollout))
