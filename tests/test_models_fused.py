"""Fused projections ([q; k; v], [gate; up]) and the fused per-layer ops inside the models.

Fused and unfused forwards must give the same greedy tokens and logits to within GEMM rounding;
fusing must not double memory (module weights become views), must keep state_dict names, survive
``.to()``, ``load_state_dict`` (copying or assigning) and checkpoint round trips, and leave autograd
to the module parameters.  The CUDA variant (marked ``cuda``) runs bf16 models with the compiled
kernels against the same models on the unfused path and against the references.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dllm_core.bench.hardware import build_random_model
from dllm_core.models.loading import load_model
from dllm_core.state import ForwardPlan
from dllm_core.testing.tiny import FAMILIES, make_tiny_model, tiny_config, write_tiny_checkpoint

HAS_CUDA = torch.cuda.is_available()
FAMS = ["llada", "dream"]


def _forward(model, ids, rows=None, cache=None):
    B, T = ids.shape
    positions = torch.arange(T, device=ids.device).expand(B, T)
    valid = torch.ones_like(ids, dtype=torch.bool)
    cache = cache if cache is not None else model.new_kv_cache(B, T)
    if rows is None:
        logit_positions = torch.arange(T, device=ids.device).expand(B, T)
    else:  # shifted-logit models predict column i from row i - 1
        logit_positions = rows + 1 if model.spec.shifted_logits else rows
    with torch.inference_mode():
        out = model(ids, positions, valid, cache, ForwardPlan(rows=rows), logit_positions)
    return out.logits, cache


def _fused_layers(model):
    return model.__dict__.get("_fused_layers")


def _assert_views_of_fused(model):
    fused = _fused_layers(model)
    assert fused is not None and len(fused) == model.spec.num_layers
    for layer, parts in zip(fused, model._parts()):
        for proj, mods in ((layer.qkv, (parts.q_proj, parts.k_proj, parts.v_proj)),
                           (layer.gate_up, (parts.gate_proj, parts.up_proj))):
            assert proj is not None and proj.valid()
            base = proj.weight.untyped_storage().data_ptr()
            for m in mods:
                assert m.weight.untyped_storage().data_ptr() == base
                if m.bias is not None:
                    assert m.bias.untyped_storage().data_ptr() == proj.bias.untyped_storage().data_ptr()


def _same_greedy(a, b, margin):
    """Same greedy tokens wherever ``b``'s best logit leads the runner-up by more than ``margin``
    (closer calls may flip at rounding level; every token when the outputs are bit-identical)."""
    top2 = b.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > margin
    assert torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear])
    # Guard against a vacuous check; at least half (the partial step compares only 8 rows).
    assert clear.float().mean() >= 0.5


def _compare(fused_model, plain_model, ids, atol, margin):
    """Cached refresh + partial step and full_logits: same greedy tokens, close logits."""
    a, ca = _forward(fused_model, ids)
    b, cb = _forward(plain_model, ids)
    torch.testing.assert_close(a, b, atol=atol, rtol=0)
    _same_greedy(a, b, margin)
    rows = torch.tensor([[3, 1, 7, 8]], device=ids.device).expand(ids.shape[0], 4)
    a2, _ = _forward(fused_model, ids, rows, ca)
    b2, _ = _forward(plain_model, ids, rows, cb)
    torch.testing.assert_close(a2, b2, atol=atol, rtol=0)
    _same_greedy(a2, b2, margin)
    with torch.no_grad():
        fa, fb = fused_model.full_logits(ids), plain_model.full_logits(ids)
    torch.testing.assert_close(fa, fb, atol=atol, rtol=0)
    _same_greedy(fa, fb, margin)
    torch.testing.assert_close(a, fa, atol=atol, rtol=0)  # cached partial forward == full forward


@pytest.mark.parametrize("family", FAMS)
def test_fused_equals_unfused(family):
    fused, plain = make_tiny_model(family, seed=5), make_tiny_model(family, seed=5)
    plain.use_fused_projections = False
    ids = torch.randint(0, 127, (2, 24), generator=torch.Generator().manual_seed(0))
    _compare(fused, plain, ids, atol=1e-5, margin=0.0)
    _assert_views_of_fused(fused)  # fused lazily by the first forward
    assert _fused_layers(plain) is None


@pytest.mark.parametrize("family", FAMS)
def test_mlp_in_row_chunks_equals_one_pass(family):
    """Large row counts (a batch-16 refresh) run the fused MLP in chunks: same result."""
    chunked, whole = make_tiny_model(family, seed=5), make_tiny_model(family, seed=5)
    chunked.mlp_chunk_rows = 7  # 2 x 24 rows -> 7 chunks, the last one short
    ids = torch.randint(0, 127, (2, 24), generator=torch.Generator().manual_seed(0))
    _compare(chunked, whole, ids, atol=1e-5, margin=0.0)


@pytest.mark.parametrize("family", FAMS)
def test_fusing_keeps_names_memory_and_loading(family, tmp_path):
    model = make_tiny_model(family, seed=1)
    names = list(model.state_dict())
    before = {n: t.clone() for n, t in model.state_dict().items()}
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.fuse_projections()
    _assert_views_of_fused(model)
    assert list(model.state_dict()) == names
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == n_bytes
    ids = torch.randint(0, 127, (1, 16), generator=torch.Generator().manual_seed(1))

    other = make_tiny_model(family, seed=2)
    model.load_state_dict(other.state_dict())  # copies into the views: the fused matrices follow
    assert _fused_layers(model)[0].qkv.valid()
    torch.testing.assert_close(_forward(model, ids)[0], _forward(other, ids)[0], atol=1e-5, rtol=0)

    third = make_tiny_model(family, seed=3)
    model.load_state_dict({n: t.clone() for n, t in third.state_dict().items()}, assign=True)  # replaces them
    assert not _fused_layers(model)[0].valid()
    torch.testing.assert_close(_forward(model, ids)[0], _forward(third, ids)[0], atol=1e-5, rtol=0)
    _assert_views_of_fused(model)  # fused again

    write_tiny_checkpoint(tmp_path / "ckpt", family, seed=3)
    loaded = load_model(tmp_path / "ckpt", FAMILIES)
    _assert_views_of_fused(loaded)  # the loader fuses
    torch.testing.assert_close(_forward(loaded, ids)[0], _forward(third, ids)[0], atol=1e-5, rtol=0)
    from dllm_core.models.loading import save_checkpoint
    save_checkpoint(loaded, tmp_path / "again", config=tiny_config(family))
    again = load_model(tmp_path / "again", FAMILIES)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.parametrize("family", FAMS)
def test_to_dtype_refuses(family):
    model = make_tiny_model(family, seed=4)
    model.fuse_projections()
    old = _fused_layers(model)[0].qkv.weight
    model.to(torch.bfloat16)
    _assert_views_of_fused(model)
    assert _fused_layers(model)[0].qkv.weight.dtype == torch.bfloat16 and old.dtype == torch.float32
    ref = make_tiny_model(family, seed=4, dtype=torch.bfloat16)
    ref.use_fused_projections = False
    ids = torch.randint(0, 127, (2, 12), generator=torch.Generator().manual_seed(2))
    a, b = _forward(model, ids)[0], _forward(ref, ids)[0]
    torch.testing.assert_close(a, b, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("family", FAMS)
def test_training_uses_module_parameters(family):
    model = make_tiny_model(family, seed=6)
    model.fuse_projections()
    ids = torch.randint(0, 127, (1, 10), generator=torch.Generator().manual_seed(3))
    model.full_logits(ids).logsumexp(-1).sum().backward()  # grad enabled: unfused path
    # q/k/v included: with gradients on, attention takes the differentiable reference (the
    # compiled kernels have no backward).
    for parts in model._parts():
        for m in (parts.q_proj, parts.k_proj, parts.v_proj, parts.gate_proj, parts.up_proj, parts.down_proj):
            assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMS)
def test_build_random_model_is_fused(family):
    model = build_random_model(tiny_config(family), torch.device("cpu"), torch.float32)
    _assert_views_of_fused(model)


def test_disabled_extension_runs_references():
    """The whole fused model path with DLLM_CORE_DISABLE_EXTENSION=1 (references everywhere)."""
    code = """
import torch
from dllm_core.ops import extension_status
from dllm_core.testing.tiny import make_tiny_model
assert not extension_status()["loaded"]
for fam in ("llada", "dream"):
    a, b = make_tiny_model(fam), make_tiny_model(fam)
    b.use_fused_projections = False
    ids = torch.randint(0, 127, (1, 9))
    with torch.no_grad():
        x, y = a.full_logits(ids), b.full_logits(ids)
    assert a.__dict__.get("_fused_layers") is not None
    torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
print("ok")
"""
    env = dict(os.environ, DLLM_CORE_DISABLE_EXTENSION="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", FAMS)
def test_fused_equals_unfused_cuda_bf16(family):
    """bf16 on the GPU: fused projections vs separate projections (both with the compiled ops),
    and build_random_model (the benchmarks' builder) ends fused."""
    overrides = {"llada": {"d_model": 256, "n_heads": 2, "n_kv_heads": 2, "mlp_hidden_size": 512},
                 "dream": {"hidden_size": 256, "num_attention_heads": 2, "num_key_value_heads": 1,
                           "intermediate_size": 512}}[family]
    fused = make_tiny_model(family, seed=7, dtype=torch.bfloat16, **overrides).cuda()
    plain = make_tiny_model(family, seed=7, dtype=torch.bfloat16, **overrides).cuda()
    plain.use_fused_projections = False
    # Seeded on the CPU: the data must not depend on which CUDA tests ran before.
    ids = torch.randint(0, 127, (2, 40), generator=torch.Generator().manual_seed(3)).cuda()
    _compare(fused, plain, ids, atol=0.15, margin=0.1)
    _assert_views_of_fused(fused)
    random = build_random_model(tiny_config(family, **overrides), torch.device("cuda"), torch.bfloat16)
    _assert_views_of_fused(random)
    _forward(random, ids)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_fused_layer_matches_reference_ops_cuda():
    """One fused layer on CUDA (compiled ops) against the same layer with every op's reference."""
    import dllm_core.ops as ops
    from dllm_core.ops.rms_norm import add_rms_norm_reference, rms_norm_reference
    from dllm_core.ops.silu_mul import silu_mul_reference

    model = make_tiny_model("dream", seed=8, dtype=torch.bfloat16, hidden_size=256, num_attention_heads=2,
                            num_key_value_heads=1, intermediate_size=512).cuda()
    ids = torch.randint(0, 127, (1, 33), generator=torch.Generator().manual_seed(4)).cuda()
    with torch.inference_mode():
        fast = model.full_logits(ids)
        saved = (ops.rms_norm, ops.add_rms_norm, ops.silu_mul, ops.rope)
        ops.rms_norm, ops.add_rms_norm, ops.silu_mul, ops.rope = (
            rms_norm_reference, add_rms_norm_reference, silu_mul_reference, ops.apply_rope)
        try:
            slow = model.full_logits(ids)
        finally:
            ops.rms_norm, ops.add_rms_norm, ops.silu_mul, ops.rope = saved
    torch.testing.assert_close(fast, slow, atol=0.15, rtol=0)
    assert (fast.argmax(-1) == slow.argmax(-1)).float().mean() > 0.95
