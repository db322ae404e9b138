"""CUDA-graph replay of the partial forward (:mod:`dllm_core.cuda_graphs`).

CPU tests pin the bucketing and duplicate-row padding (padding is exact on an eager forward, and
the wrapper's padded static path equals plain decoding for every registered cache policy).
CUDA tests check that greedy outputs with captured graphs are identical to eager ones.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from dllm_core import Engine, ForwardPlan
from dllm_core.cuda_graphs import GraphedForward, bucket_size, pad_columns, write_padded
from dllm_core.testing.tiny import make_tiny_model

PROMPTS = [[3, 4, 5, 6, 7, 8], [9, 10], [11, 12, 13]]
#: The cache policies this test exercises when they are registered (the others are skipped).
CACHES = ("none", "prefix", "dual", "d2cache", "freecache")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def available_caches() -> list[str]:
    names = set(Engine(model=make_tiny_model("llada"), device="cpu").registry.names("cache"))
    return [c for c in CACHES if c in names]


# -- bucketing and padding -----------------------------------------------------------------------

@pytest.mark.parametrize("n, want", [(1, 16), (16, 16), (17, 32), (64, 64), (65, 96), (256, 256), (257, 384),
                                     (1024, 1024), (1025, 1280)])
def test_bucket_size(n, want):
    assert bucket_size(n) == want


def test_bucket_size_respects_the_sequence_length():
    assert bucket_size(20, limit=24) == 24
    assert bucket_size(30, limit=24) == 30  # never below n
    assert all(bucket_size(n, 4096) >= n for n in range(1, 4097))
    assert len({bucket_size(n, 4096) for n in range(1, 257)}) == 10  # few graphs for any row count
    with pytest.raises(ValueError):
        bucket_size(0)


def test_pad_columns_repeats_the_last_column():
    idx = torch.tensor([[3, 5, 9], [1, 2, 4]])
    assert pad_columns(idx, 5).tolist() == [[3, 5, 9, 9, 9], [1, 2, 4, 4, 4]]
    assert pad_columns(idx, 3).tolist() == idx.tolist()
    dst = torch.full((2, 4), -1)
    write_padded(dst, idx[:, :1])
    assert dst.tolist() == [[3, 3, 3, 3], [1, 1, 1, 1]]
    with pytest.raises(ValueError):
        write_padded(torch.empty(2, 2, dtype=torch.long), idx)


def _batch(model, T: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B = 2
    ids = torch.randint(2, model.spec.vocab_size - 1, (B, T), generator=g)
    ids[:, T // 2:] = model.spec.mask_id
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :3] = False  # left padding in the second sequence
    positions = (valid.long().cumsum(1) - 1).clamp_min(0)
    return ids, positions, valid


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_duplicate_row_padding_is_exact_on_an_eager_forward(family):
    """Padding rows and logit positions with copies of the last one changes neither the logits of
    the real positions nor the K/V cache (the property graph bucketing relies on)."""
    model = make_tiny_model(family)
    ids, positions, valid = _batch(model)
    B, T = ids.shape
    rows = torch.tensor([[9, 10, 11, 12, 13], [4, 10, 11, 12, 13]])
    logit_pos = torch.tensor([[10, 11, 12], [11, 12, 13]])
    results = []
    for q, r in ((5, 3), (16, 8), (9, 4)):
        cache = model.new_kv_cache(B, T)
        model(ids, positions, valid, cache, ForwardPlan(), logit_pos)  # refresh fills the cache
        out = model(ids, positions, valid, cache, ForwardPlan(rows=pad_columns(rows, q)), pad_columns(logit_pos, r))
        results.append((out.logits[:, :3], cache))
    ref_logits, ref_cache = results[0]
    for logits, cache in results[1:]:
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
        for a, b in zip(cache.k + cache.v, ref_cache.k + ref_cache.v):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_padding_keeps_attention_probabilities_of_the_real_rows():
    model = make_tiny_model("llada")
    ids, positions, valid = _batch(model)
    B, T = ids.shape
    rows = torch.tensor([[10, 11, 12], [11, 12, 13]])
    outs = []
    for q in (3, 16):
        cache = model.new_kv_cache(B, T)
        model(ids, positions, valid, cache, ForwardPlan(), rows)
        plan = ForwardPlan(rows=pad_columns(rows, q), need_attention=True)
        outs.append(model(ids, positions, valid, cache, plan, pad_columns(rows, q)).attention)
    for a, b in zip(outs[0], outs[1]):
        torch.testing.assert_close(b[:, :3], a, rtol=1e-5, atol=1e-6)


# -- the wrapper on CPU (capture=False runs the padded static path eagerly) -------------------------

def test_wrapper_keeps_one_cache_per_shape():
    fwd = GraphedForward(make_tiny_model("llada"), capture=False)
    a = fwd.new_kv_cache(2, 24)
    assert fwd.new_kv_cache(2, 24) is a
    assert fwd.new_kv_cache(1, 24) is not a
    fwd.clear()
    assert fwd.new_kv_cache(2, 24) is not a


def test_wrapper_runs_a_foreign_cache_eagerly():
    model = make_tiny_model("llada")
    fwd = GraphedForward(model, capture=False)
    ids, positions, valid = _batch(model)
    lp = torch.tensor([[10, 11], [11, 12]])
    with pytest.warns(RuntimeWarning, match="new_kv_cache"):
        out = fwd(ids, positions, valid, model.new_kv_cache(*ids.shape), ForwardPlan(), lp)
    ref = model(ids, positions, valid, model.new_kv_cache(*ids.shape), ForwardPlan(), lp)
    torch.testing.assert_close(out.logits, ref.logits)
    assert fwd.stats["eager_calls"] == 1


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache", available_caches())
def test_padded_static_path_equals_plain_decoding(family, cache):
    """Also across prompt lengths that share one padded cache length (and so one cache)."""
    model = make_tiny_model(family)
    eng = Engine(model=model, cache=cache, device="cpu")
    settings = {"gen_length": 16, "block_length": 8, "steps": 8}
    batches = (PROMPTS, PROMPTS[1:], PROMPTS)  # sequence lengths 22, 19, 22: padded to 64
    want = [eng.generate_ids(p, **settings).token_ids for p in batches]
    eng.forward = GraphedForward(model, capture=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the wrapper must not fall back to eager here
        got = [eng.generate_ids(p, **settings).token_ids for p in batches]
    assert got == want
    assert eng.forward.stats["eager_calls"] > 0 and list(eng.forward._slots) == [(2, 64), (3, 64)]


def test_least_recently_used_shapes_are_dropped():
    fwd = GraphedForward(make_tiny_model("llada"), capture=False, max_slots=2, length_multiple=16)
    a = fwd.new_kv_cache(1, 20)
    assert a.length == 32 and fwd.new_kv_cache(1, 30) is a
    b = fwd.new_kv_cache(2, 20)
    fwd.new_kv_cache(1, 20)  # a is now the most recently used
    fwd.new_kv_cache(3, 20)  # drops b
    assert fwd.new_kv_cache(1, 20) is a and fwd.new_kv_cache(2, 20) is not b


# -- CUDA ----------------------------------------------------------------------------------------

@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache", available_caches())
def test_graphs_give_identical_greedy_outputs(family, cache):
    model = make_tiny_model(family).cuda()
    settings = {"gen_length": 32, "block_length": 16, "steps": 16}
    eager = Engine(model=model, cache=cache, device="cuda")
    graphed = Engine(model=model, cache=cache, device="cuda", cuda_graphs=True)
    assert isinstance(graphed.forward, GraphedForward)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for prompts in (PROMPTS, PROMPTS[:1], PROMPTS):  # the third run reuses the graphs of the first
            assert graphed.generate_ids(prompts, **settings).token_ids == \
                eager.generate_ids(prompts, **settings).token_ids
    fwd = graphed.forward
    assert fwd.stats["replays"] > 0 and fwd.stats["eager_calls"] == 0
    assert fwd.num_graphs <= 16  # bucketing: far fewer graphs than steps


@cuda
@pytest.mark.cuda
def test_graph_replays_follow_new_inputs():
    """Replaying a graph with other rows/tokens gives the eager result of those inputs."""
    model = make_tiny_model("llada").cuda()
    fwd = GraphedForward(model)
    ids, positions, valid = (t.cuda() for t in _batch(model))
    B, T = ids.shape
    eager_cache = model.new_kv_cache(B, T)
    cache = fwd.new_kv_cache(B, T)
    lp = torch.tensor([[10, 11, 12], [11, 12, 13]], device="cuda")
    model(ids, positions, valid, eager_cache, ForwardPlan(), lp)
    fwd(ids, positions, valid, cache, ForwardPlan(), lp)
    for step, rows in enumerate(([[10, 11, 12], [11, 12, 13]], [[11, 12, 14], [12, 13, 15]],
                                 [[10, 12, 13], [13, 14, 15]])):
        rows_t = torch.tensor(rows, device="cuda")
        ids[:, 10 + step] = 5 + step  # a commit changes the tokens between steps
        plan = ForwardPlan(rows=rows_t)
        want = model(ids, positions, valid, eager_cache, plan, rows_t)
        got = fwd(ids, positions, valid, cache, plan, rows_t)
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
    assert fwd.stats["captures"] == 2 and fwd.stats["replays"] == 4  # refresh + one rows shape


class _SyncingModel(torch.nn.Module):
    """A forward that reads a value back to the host, which a CUDA graph cannot capture."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.spec = model.spec

    def new_kv_cache(self, batch, length):
        return self.inner.new_kv_cache(batch, length)

    def forward(self, *args):
        if float(args[0].float().sum()) < 0:  # host sync
            raise AssertionError
        return self.inner(*args)


@cuda
@pytest.mark.cuda
def test_uncapturable_forward_falls_back_to_eager():
    model = make_tiny_model("llada").cuda()
    fwd = GraphedForward(_SyncingModel(model))
    ids, positions, valid = (t.cuda() for t in _batch(model))
    lp = torch.tensor([[10, 11], [11, 12]], device="cuda")
    with pytest.warns(RuntimeWarning, match="capture"):
        out = fwd(ids, positions, valid, fwd.new_kv_cache(*ids.shape), ForwardPlan(), lp)
    ref = model(ids, positions, valid, model.new_kv_cache(*ids.shape), ForwardPlan(), lp)
    torch.testing.assert_close(out.logits, ref.logits)
    out = fwd(ids, positions, valid, fwd.new_kv_cache(*ids.shape), ForwardPlan(), lp)  # no second try
    assert fwd.stats["captures"] == 0 and fwd.stats["eager_calls"] == 2
