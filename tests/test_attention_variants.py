"""CUDA partial_attention: every launch variant and plan decision against the reference.

The CUDA launcher picks a plan per call (``plan_attention`` in csrc/cuda/attention_plan.cu):
main-pass row tile (32, 64 or 128 rows per block), K/V pipeline depth (2 or 3 stages), key splits,
probability-pass row tile (32 or 64), its Q/K ring depth (2 or 3 stages) and query-head slices.  The
environment variables ``DLLM_CORE_ATTN_ROWS``, ``..._STAGES``, ``..._SPLITS``, ``..._PROBS_ROWS``,
``..._PROBS_STAGES`` and ``..._HEAD_SLICES``
override those choices, ``..._MMA=wgmma/sync`` the main pass's MMA flavour (the automatic plan takes
wgmma for 128-row tiles on sm_90a) and ``..._WGMMA_GRID`` caps the wgmma pass's persistent grid (read
at every call), so each variant runs on every shape here, including shapes its automatic choice never
sees; ``..._PDL=0`` launches the combine and probability kernels as plain stream successors instead of
programmatic dependents; ``..._CARVEOUT=0`` leaves the L1 / shared-memory split to the driver;
``..._PROBS_KEY_HALVES=0/1`` one or two warps per 16-row slab of the probability pass;
``..._PROBS_SCORES=0/1/2`` the recomputing probability pass or a stored-scores one (tested in
tests/test_attention_stored_scores.py; the probability-pass tests here force the recomputing one);
``DLLM_CORE_ATTN_TRACE=1`` prints the plan to stderr, which checks the automatic decisions.
All tests need a CUDA GPU and the compiled extension, and skip otherwise.
"""

from __future__ import annotations

import re

import pytest
import torch

from dllm_core.ops import extension as ext
from dllm_core.ops.partial_attention import partial_attention_reference
from op_kernels import HAS_CUDA, check_attention, check_eager_and_graph

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]
ENV = ("DLLM_CORE_ATTN_ROWS", "DLLM_CORE_ATTN_STAGES", "DLLM_CORE_ATTN_SPLITS", "DLLM_CORE_ATTN_PROBS_ROWS",
       "DLLM_CORE_ATTN_HEAD_SLICES", "DLLM_CORE_ATTN_TRACE", "DLLM_CORE_ATTN_MMA", "DLLM_CORE_ATTN_WGMMA_GRID",
       "DLLM_CORE_ATTN_PDL", "DLLM_CORE_ATTN_PROBS_STAGES", "DLLM_CORE_ATTN_CARVEOUT",
       "DLLM_CORE_ATTN_PROBS_KEY_HALVES", "DLLM_CORE_ATTN_PROBS_SCORES", "DLLM_CORE_ATTN_L2_HINTS",
       "DLLM_CORE_ATTN_TMA")

# B, q, H, Hkv, D, T; rows per (batch, kv head) = q * H / Hkv around the 32 / 64 / 128 tile edges,
# GQA groups 1, 2, 4, 7, key counts off the 64-key tile (multiples of 4 and not: the probability pass
# stores or adds float4s only when T % 4 == 0).
SHAPES = [
    (1, 1, 4, 4, 128, 1),       # 1 row, 1 key
    (3, 17, 4, 4, 64, 77),      # 17 rows (32-row tile, half empty)
    (2, 32, 4, 4, 128, 515),    # 32 rows exactly (MHA q = 32)
    (2, 33, 4, 4, 128, 130),    # 33 rows: 64-row tile
    (2, 32, 8, 4, 128, 1030),   # group 2: 64 rows exactly
    (1, 9, 8, 2, 64, 200),      # group 4: 36 rows
    (2, 65, 4, 4, 128, 515),    # 65 rows: 128-row tile
    (1, 128, 4, 4, 128, 1000),  # 128 rows exactly (MHA q = 128)
    (2, 129, 2, 2, 64, 300),    # 129 rows: a second, almost empty 128-row block
    (1, 32, 14, 2, 128, 515),   # group 7 (Dream-like): 224 rows
    (2, 19, 28, 4, 128, 130),   # group 7: 133 rows
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    if not ext.loaded() or not ext.has_kernel("partial_attention", "cuda"):
        pytest.skip("dllm_core._C with the CUDA partial_attention kernel is not built")
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def _inputs(shape, dtype, strided_q=False, seed=0):
    B, n, H, Hkv, D, T = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, n, H, D, device="cuda", generator=g).to(dtype)
    if strided_q:  # (B, H, n, D) storage seen as (B, n, H, D): row and head strides swapped
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
    k = torch.randn(B, T, Hkv, D, device="cuda", generator=g).to(dtype)
    v = torch.randn(B, T, Hkv, D, device="cuda", generator=g).to(dtype)
    mask = torch.rand(B, T, device="cuda", generator=g) < 0.7
    if B > 1:
        mask[1] = torch.arange(T, device="cuda") < max(1, T // 3)  # padding: short valid prefix
    mask[:, 0] = True  # every row has a key (the fully masked case is tested separately)
    return q, k, v, mask, D ** -0.5


def _run_and_check(shape, dtype, return_probs, strided_q=False):
    args = _inputs(shape, dtype, strided_q)
    got = torch.ops.dllm_core.partial_attention(*args, return_probs)
    torch.cuda.synchronize()
    check_attention(got, partial_attention_reference(*args, return_probs), dtype, return_probs)


@pytest.mark.parametrize("splits", [None, "1", "3"], ids=lambda s: f"splits={s or 'auto'}")
@pytest.mark.parametrize("stages", [None, "2", "3"], ids=lambda s: f"stages={s or 'auto'}")
@pytest.mark.parametrize("rows", [None, "32", "64", "128"], ids=lambda r: f"rows={r or 'auto'}")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_main_pass_variants(monkeypatch, shape, rows, stages, splits):
    """Every main-pass row tile x K/V stages x split choice on every shape, bf16 and fp16, probabilities on/off."""
    if rows or stages:  # the mma.sync variants, also once the automatic plan takes wgmma for 128 rows
        monkeypatch.setenv("DLLM_CORE_ATTN_MMA", "sync")
    if rows:
        monkeypatch.setenv("DLLM_CORE_ATTN_ROWS", rows)
    if stages:
        monkeypatch.setenv("DLLM_CORE_ATTN_STAGES", stages)
    if splits:
        monkeypatch.setenv("DLLM_CORE_ATTN_SPLITS", splits)
    for i, dtype in enumerate((torch.bfloat16, torch.float16)):
        for return_probs in (False, True):
            _run_and_check(shape, dtype, return_probs, strided_q=(i == 1))


@pytest.mark.parametrize("probs_stages", [None, "2", "3"], ids=lambda s: f"probs_stages={s or 'auto'}")
@pytest.mark.parametrize("slices", [None, "1", "2", "7"], ids=lambda s: f"slices={s or 'auto'}")
@pytest.mark.parametrize("probs_rows", [None, "32", "64"], ids=lambda r: f"probs_rows={r or 'auto'}")
@pytest.mark.parametrize("shape", SHAPES + [(2, 70, 4, 2, 128, 4160)], ids=str)
def test_probability_pass_variants(monkeypatch, shape, probs_rows, slices, probs_stages):
    """Every probability-pass row tile x ring depth x head slicing (plain stores / atomics) on every shape;
    7 slices of 14 or 28 heads start and end inside GQA groups, 1-head slices leave the ring's later
    commit groups empty."""
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_SCORES", "0")
    if probs_rows:
        monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_ROWS", probs_rows)
    if probs_stages:
        monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_STAGES", probs_stages)
    if slices:  # a slice count that does not divide H is ignored by the plan (auto)
        monkeypatch.setenv("DLLM_CORE_ATTN_HEAD_SLICES", slices)
    for dtype in (torch.bfloat16, torch.float16):
        _run_and_check(shape, dtype, True)


@pytest.mark.parametrize("halves", ["0", "1"], ids=lambda v: f"key_halves={v}")
@pytest.mark.parametrize("probs_stages", ["2", "3"], ids=lambda s: f"probs_stages={s}")
@pytest.mark.parametrize("probs_rows", ["32", "64"], ids=lambda r: f"probs_rows={r}")
@pytest.mark.parametrize("shape", SHAPES + [(2, 70, 4, 2, 128, 4160)], ids=str)
def test_probability_key_halves(monkeypatch, shape, probs_rows, probs_stages, halves):
    """One or two warps per 16-row slab (the automatic plan: two for 32-row blocks) in every row tile and ring
    depth, with the automatic head slices (plain stores and atomics)."""
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_SCORES", "0")
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_ROWS", probs_rows)
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_STAGES", probs_stages)
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_KEY_HALVES", halves)
    for dtype in (torch.bfloat16, torch.float16):
        _run_and_check(shape, dtype, True)


@pytest.mark.parametrize("probs_rows", ["32", "64"])  # 32: key halves (automatic)
@pytest.mark.parametrize("stages", ["2", "3"])
@pytest.mark.parametrize("rows,splits", [("32", "1"), ("64", "3"), ("128", "1"), ("128", "3")])
def test_fully_masked_row_every_variant(monkeypatch, rows, splits, stages, probs_rows):
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_SCORES", "0")
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_ROWS", probs_rows)
    monkeypatch.setenv("DLLM_CORE_ATTN_MMA", "sync")
    monkeypatch.setenv("DLLM_CORE_ATTN_ROWS", rows)
    monkeypatch.setenv("DLLM_CORE_ATTN_SPLITS", splits)
    monkeypatch.setenv("DLLM_CORE_ATTN_STAGES", stages)
    _check_fully_masked_row((2, 40, 8, 4, 128, 300), torch.bfloat16)


def _check_fully_masked_row(shape, dtype) -> None:
    """Batch row 1 with every key masked ends NaN (output and probabilities); the other rows match the
    reference."""
    q, k, v, mask, scale = _inputs(shape, dtype)
    mask[1] = False
    out, probs = torch.ops.dllm_core.partial_attention(q, k, v, mask, scale, True)
    ref_out, ref_probs = partial_attention_reference(q, k, v, mask, scale, True)
    assert out[1].isnan().all() and probs[1].isnan().all()
    keep = [0] + list(range(2, shape[0]))
    check_attention((out[keep], probs[keep]), (ref_out[keep], ref_probs[keep]), dtype, True)


def _plan(capfd, monkeypatch, shape, return_probs) -> dict[str, int]:
    monkeypatch.setenv("DLLM_CORE_ATTN_TRACE", "1")
    capfd.readouterr()
    args = _inputs(shape, torch.bfloat16)
    torch.ops.dllm_core.partial_attention(*args, return_probs)
    torch.cuda.synchronize()
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("partial_attention plan:")]
    assert lines, "no plan trace printed (DLLM_CORE_ATTN_TRACE)"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", lines[-1])}


# Expected automatic stages: 3 for a 64-row grid that fills the GPU unsplit (free at 2 blocks/SM;
# split grids measured slower with 3) and for 32-row grids that
# fill waves of 2 blocks/SM better than waves of 3 (LLaDA batch 16 q = 32: 512 blocks), else 2.
@pytest.mark.parametrize("shape,rows,probs_rows", [
    ((1, 32, 32, 32, 128, 4096), 32, 32),    # LLaDA q = 32: no idle warps
    ((16, 32, 32, 32, 128, 1024), 32, 32),   # 512 blocks: 3 stages, 2 full waves of 2 blocks/SM
    ((12, 32, 32, 32, 128, 1024), 32, 32),   # 384 blocks: within one wave of 3 blocks/SM, 2 stages
    ((1, 33, 4, 4, 128, 100), 64, 64),
    ((1, 64, 32, 32, 128, 2048), 64, 64),    # split grid: 2 stages
    ((16, 64, 32, 32, 128, 1024), 64, 64),   # 512 blocks, unsplit: 3 stages
    ((1, 32, 8, 4, 128, 100), 64, 32),       # group 2, 64 rows
    ((1, 65, 4, 4, 128, 100), 128, 64),
    ((16, 128, 32, 32, 128, 512), 128, 64),  # LLaDA q = 128: K/V streamed once per (batch, head)
    ((1, 32, 28, 4, 128, 4096), 128, 32),    # Dream q = 32: 224 rows
], ids=str)
def test_plan_decisions(capfd, monkeypatch, shape, rows, probs_rows):
    """The automatic plan: row tiles by rows per (batch, kv head), K/V stages, consistent key splits, the
    probability pass's ring depth."""
    B, n, H, Hkv, D, T = shape
    plan = _plan(capfd, monkeypatch, shape, True)
    assert (plan["rows"], plan["probs_rows"]) == (rows, probs_rows)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    blocks = B * Hkv * -(-n * (H // Hkv) // rows)

    def wave_cost(per_sm):  # memory bound: a wave of per_sm blocks/SM takes ~per_sm units
        return -(-blocks // (per_sm * sms)) * per_sm

    fuller = rows == 32 and blocks >= 3 * sms and wave_cost(2) < wave_cost(3)
    unsplit64 = rows == 64 and blocks >= 2 * sms
    assert plan["stages"] == (3 if plan["mma"] == 1 else 3 if unsplit64 or fuller else 2)
    n_tiles = -(-T // 64)
    assert 1 <= plan["splits"] <= min(n_tiles, 64)
    assert plan["splits"] * plan["tiles_per_split"] >= n_tiles > (plan["splits"] - 1) * plan["tiles_per_split"]
    assert plan["row_blocks"] * probs_rows >= n and H % plan["head_slices"] == 0
    assert plan["probs_key_halves"] == (1 if probs_rows == 32 else 0)
    probs_blocks = n_tiles * plan["row_blocks"] * B * plan["head_slices"]
    if plan["probs_stages"] == 3:  # two heads in flight: 64-row blocks whose grid fits one wave of 2 per SM
        assert probs_rows == 64 and probs_blocks <= 2 * sms
    else:
        assert plan["probs_stages"] == 2
    if blocks >= 3 * sms:
        assert plan["splits"] == 1, "a grid that fills the GPU is not split"
    if B == 1 and T >= 2048:
        assert plan["splits"] > 1, "batch 1 long T is split to fill the GPU"


@pytest.mark.parametrize("shape,splits", [
    ((1, 32, 32, 32, 128, 512), 4),    # LLaDA q = 32: one tile per split would cost more in partials
    ((1, 32, 32, 32, 128, 1024), 4),
    ((1, 32, 32, 32, 128, 4096), 8),   # two blocks per SM: co-resident 2-warp blocks share it well
    ((1, 64, 32, 32, 128, 2048), 4),
    ((1, 64, 32, 32, 128, 4096), 8),
], ids=str)
def test_plan_split_counts_h100(capfd, monkeypatch, shape, splits):
    """The split model's picks at the LLaDA-8B batch-1 shapes it was refit on (132 SMs, mma.sync main pass;
    benchmarks/results/h100-session7-splits.json)."""
    if torch.cuda.get_device_properties(0).multi_processor_count != 132:
        pytest.skip("the split counts are those of a 132-SM GPU (H100 SXM)")
    assert _plan(capfd, monkeypatch, shape, False)["splits"] == splits


def test_plan_overrides_and_bad_values(capfd, monkeypatch):
    shape = (1, 32, 32, 32, 128, 1024)
    monkeypatch.setenv("DLLM_CORE_ATTN_MMA", "sync")
    monkeypatch.setenv("DLLM_CORE_ATTN_ROWS", "128")
    monkeypatch.setenv("DLLM_CORE_ATTN_SPLITS", "4")
    monkeypatch.setenv("DLLM_CORE_ATTN_STAGES", "3")
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_STAGES", "3")
    plan = _plan(capfd, monkeypatch, shape, True)
    assert (plan["rows"], plan["stages"], plan["splits"], plan["tiles_per_split"]) == (128, 3, 4, 4)
    assert plan["probs_stages"] == 3
    monkeypatch.setenv("DLLM_CORE_ATTN_ROWS", "48")  # not a variant: ignored
    monkeypatch.setenv("DLLM_CORE_ATTN_SPLITS", "0")
    monkeypatch.setenv("DLLM_CORE_ATTN_STAGES", "4")
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_STAGES", "4")
    plan = _plan(capfd, monkeypatch, shape, True)
    assert plan["rows"] == 32 and plan["stages"] == 2 and plan["splits"] >= 1
    assert plan["probs_stages"] in (2, 3), "an invalid ring depth falls back to the automatic one"


# ---- wgmma main pass (csrc/cuda/partial_attention_wgmma.cu, sm_90a): DLLM_CORE_ATTN_MMA=wgmma ----------
# Shapes with more than 64 rows per (batch, kv head), around the 128-row tile edges: MHA q = 65 / 128 / 130,
# GQA groups 2 / 4 / 7 (Dream-like), one D = 64; T is parametrised separately.
WGMMA_SHAPES = [
    (2, 65, 4, 4, 128),   # 65 rows: the second warpgroup holds one row
    (1, 128, 4, 4, 128),  # 128 rows exactly
    (2, 130, 2, 2, 128),  # 130 rows: a second block with 2 rows
    (2, 40, 8, 4, 128),   # group 2: 80 rows
    (1, 20, 8, 2, 128),   # group 4: 80 rows
    (2, 19, 28, 4, 128),  # group 7: 133 rows
    (2, 70, 4, 4, 64),    # D = 64
]
WGMMA_T = [1, 37, 64, 130, 515, 4096]


def _wgmma_device() -> bool:
    return torch.cuda.get_device_capability() == (9, 0)


def _force_wgmma(capfd, monkeypatch, shape):
    """Sets DLLM_CORE_ATTN_MMA=wgmma and checks from the trace that the wgmma pass really runs."""
    if not _wgmma_device():
        pytest.skip("the wgmma main pass needs compute capability 9.0 (sm_90a)")
    monkeypatch.setenv("DLLM_CORE_ATTN_MMA", "wgmma")
    plan = _plan(capfd, monkeypatch, shape, False)
    monkeypatch.delenv("DLLM_CORE_ATTN_TRACE")
    assert (plan["mma"], plan["rows"], plan["stages"]) == (1, 128, 3), plan


@pytest.mark.parametrize("splits", [None, "3"], ids=lambda s: f"splits={s or 'auto'}")
@pytest.mark.parametrize("T", WGMMA_T, ids=lambda t: f"T={t}")
@pytest.mark.parametrize("shape", WGMMA_SHAPES, ids=str)
def test_wgmma_main_pass(capfd, monkeypatch, shape, T, splits):
    """wgmma main pass vs the reference: bf16 (contiguous q) and fp16 (strided q), probabilities off/on
    (the probability pass reads its log2-sum-exp), unsplit or forced into 3 key splits (combine kernel)."""
    if splits:
        monkeypatch.setenv("DLLM_CORE_ATTN_SPLITS", splits)
    _force_wgmma(capfd, monkeypatch, (*shape, T))
    for i, dtype in enumerate((torch.bfloat16, torch.float16)):
        for return_probs in (False, True):
            _run_and_check((*shape, T), dtype, return_probs, strided_q=(i == 1))


@pytest.mark.parametrize("splits", ["1", "3"])
@pytest.mark.parametrize("shape", [(2, 40, 8, 4, 128, 300), (2, 130, 2, 2, 64, 4096)], ids=str)
def test_wgmma_fully_masked_row(capfd, monkeypatch, shape, splits):
    """A batch row with every key masked ends NaN (output and probabilities), the others match."""
    monkeypatch.setenv("DLLM_CORE_ATTN_SPLITS", splits)
    _force_wgmma(capfd, monkeypatch, shape)
    for dtype in (torch.bfloat16, torch.float16):
        _check_fully_masked_row(shape, dtype)


# Persistent grid: DLLM_CORE_ATTN_WGMMA_GRID caps it, so each block runs many work units in a row (the
# ring's and Q's mbarrier phases, the ping-pong barriers and the per-unit state carry across units):
# units of different lengths (a short last split), several row tiles, GQA, D = 64, a fully masked batch row.
@pytest.mark.parametrize("grid", ["1", "3", "7"], ids=lambda g: f"grid={g}")
@pytest.mark.parametrize("shape,splits", [
    ((3, 130, 4, 4, 128, 515), None),   # 24 units of 5 tiles (2 row tiles each)
    ((3, 130, 4, 4, 128, 515), "3"),    # 72 units: splits of 2 / 2 / 1 128-key tiles
    ((2, 19, 28, 4, 128, 1000), "5"),   # group 7: 2 row tiles, 80 units
    ((4, 70, 4, 4, 64, 130), None),     # D = 64, 2-tile units
    ((5, 40, 8, 4, 128, 37), None),     # 1-tile units (Q released right after its only S)
], ids=str)
def test_wgmma_persistent_units(capfd, monkeypatch, shape, splits, grid):
    if splits:
        monkeypatch.setenv("DLLM_CORE_ATTN_SPLITS", splits)
    _force_wgmma(capfd, monkeypatch, shape)
    monkeypatch.setenv("DLLM_CORE_ATTN_WGMMA_GRID", grid)
    for i, dtype in enumerate((torch.bfloat16, torch.float16)):
        for return_probs in (False, True):
            _run_and_check(shape, dtype, return_probs, strided_q=(i == 1))
    _check_fully_masked_row(shape, torch.bfloat16)


def test_wgmma_plan_override(capfd, monkeypatch):
    """DLLM_CORE_ATTN_MMA: unset, the plan takes wgmma for 128-row tiles on a wgmma-capable device;
    =sync (and no wgmma-capable device) keep mma.sync; =wgmma takes only row tiles of more than 64 rows
    (forced ROWS=128 included) and records mma=1 with its fixed 3-stage ring (128-key stages)."""
    auto = _plan(capfd, monkeypatch, (1, 128, 4, 4, 128, 300), False)
    assert (auto["mma"], auto["rows"]) == ((1, 128) if _wgmma_device() else (0, 128))
    assert _plan(capfd, monkeypatch, (1, 64, 4, 4, 128, 300), False)["mma"] == 0  # 64-row tile: mma.sync
    monkeypatch.setenv("DLLM_CORE_ATTN_MMA", "sync")
    assert _plan(capfd, monkeypatch, (1, 128, 4, 4, 128, 300), False)["mma"] == 0
    monkeypatch.setenv("DLLM_CORE_ATTN_MMA", "wgmma")
    plan = _plan(capfd, monkeypatch, (1, 128, 4, 4, 128, 300), False)
    if not _wgmma_device():
        assert plan["mma"] == 0
        return
    assert (plan["mma"], plan["rows"], plan["stages"]) == (1, 128, 3)
    assert _plan(capfd, monkeypatch, (1, 64, 4, 4, 128, 300), False)["mma"] == 0  # 64 rows: mma.sync tile
    monkeypatch.setenv("DLLM_CORE_ATTN_ROWS", "64")  # M > 64 still takes wgmma (128 rows)
    assert _plan(capfd, monkeypatch, (1, 65, 4, 4, 128, 300), False)["rows"] == 128
    monkeypatch.setenv("DLLM_CORE_ATTN_ROWS", "128")  # forced 128-row tile over 32 rows: wgmma too
    plan = _plan(capfd, monkeypatch, (1, 32, 4, 4, 128, 300), False)
    assert (plan["mma"], plan["rows"]) == (1, 128)
    _run_and_check((1, 32, 4, 4, 128, 300), torch.bfloat16, True)


# ---- programmatic dependent launch (csrc/cuda/pdl.cuh): combine and probability pass start early ----------

@pytest.mark.parametrize("carveout", ["1", "0"], ids=lambda v: f"carveout={v}")
@pytest.mark.parametrize("shape", [(2, 64, 4, 4, 128, 1030), (1, 32, 28, 4, 128, 515)], ids=str)
def test_carveout_switch(monkeypatch, shape, carveout):
    """The chain's kernels with the largest shared-memory carveout (default) and with the driver's choice."""
    monkeypatch.setenv("DLLM_CORE_ATTN_CARVEOUT", carveout)
    for return_probs in (False, True):
        _run_and_check(shape, torch.bfloat16, return_probs)


@pytest.mark.parametrize("pdl", ["1", "0"], ids=lambda v: f"pdl={v}")
@pytest.mark.parametrize("mma,splits,slices", [
    ("sync", "1", "1"), ("sync", "3", "1"), ("sync", "3", "2"), ("sync", None, None), ("wgmma", "3", "2"),
    ("wgmma", "1", None)], ids=str)
@pytest.mark.parametrize("shape", [(2, 32, 4, 4, 128, 515), (1, 32, 14, 2, 128, 515), (2, 65, 4, 4, 64, 1030)],
                         ids=str)
def test_chained_launch(capfd, monkeypatch, shape, mma, splits, slices, pdl):
    """Main pass -> combine -> probability pass with and without programmatic dependent launch, eager and in
    a CUDA graph, on a probability buffer the allocator hands back dirty (the main pass must zero it for
    the atomics of head slices)."""
    monkeypatch.setenv("DLLM_CORE_ATTN_PDL", pdl)
    monkeypatch.setenv("DLLM_CORE_ATTN_PROBS_SCORES", "0")
    monkeypatch.setenv("DLLM_CORE_ATTN_MMA", mma)
    for name, value in (("DLLM_CORE_ATTN_SPLITS", splits), ("DLLM_CORE_ATTN_HEAD_SLICES", slices)):
        if value:
            monkeypatch.setenv(name, value)
    plan = _plan(capfd, monkeypatch, shape, True)
    capable = torch.cuda.get_device_capability(0)[0] >= 9
    assert plan["pdl"] == (1 if capable and pdl == "1" else 0)
    monkeypatch.delenv("DLLM_CORE_ATTN_TRACE")
    check_eager_and_graph(lambda seed: _inputs(shape, torch.bfloat16, seed=seed))
