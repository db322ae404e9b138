"""CUDA partial_attention's cluster kernel (plan.cluster, csrc/cuda/partial_attention_cluster.cu): one kernel of
thread-block clusters that splits the keys over the blocks of a cluster, exchanges the softmax statistics and sums
the partial outputs through distributed shared memory, and adds the head-mean probabilities with atomics.
``DLLM_CORE_ATTN_CLUSTER=0`` switches it off, ``1/2/4/8/16`` forces that cluster size wherever its blocks (at most
4 tiles of 64 keys each) can hold the keys.  Needs a CUDA GPU with compute capability 9.0 and the compiled
extension; skips otherwise.
"""

from __future__ import annotations

import pytest
import torch
from op_kernels import HAS_CUDA, check_attention, check_eager_and_graph
from test_attention_variants import _check_fully_masked_row, _clean_env, _inputs, _plan  # noqa: F401

from dllm_core.ops.partial_attention import partial_attention_reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]

MAX_TILES = 4  # kClusterMaxTiles: 64-key tiles one block holds

# B, q, H, Hkv, D, T: rows per (batch, kv head) at and around the 32 / 64-row tiles, GQA groups 1, 2, 7 (several
# row tiles, the last one partial), D = 64 and 128, key counts off the 64-key tile, multiples of 4 (float4
# atomics) and not (scalar ones).
SHAPES = [
    (1, 1, 4, 4, 128, 1),        # 1 row, 1 key: every block but one past the keys
    (3, 17, 4, 4, 64, 77),       # 17 rows of a 32-row tile, T % 4 != 0
    (2, 32, 4, 4, 128, 515),     # 32 rows exactly (MHA q = 32)
    (2, 33, 4, 4, 128, 130),     # 33 rows: 64-row tile
    (1, 32, 8, 4, 64, 256),      # group 2: 64 rows exactly
    (1, 32, 14, 2, 128, 512),    # group 7: 224 rows, 4 row tiles
    (2, 19, 28, 4, 128, 1020),   # group 7: 133 rows, 3 row tiles
    (1, 64, 32, 32, 128, 1024),  # LLaDA-like q = 64
]


@pytest.fixture(autouse=True)
def _cluster_device(_clean_env):
    if torch.cuda.get_device_capability(0)[0] < 9:
        pytest.skip("thread-block clusters need compute capability 9.0")


def _fits(T: int, cluster: int) -> bool:
    return -(-T // 64) <= cluster * MAX_TILES


@pytest.mark.parametrize("cluster", ["1", "2", "4", "8", "16"], ids=lambda c: f"cluster={c}")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cluster_sizes(capfd, monkeypatch, shape, cluster):
    """Every forced cluster size on every shape, bf16 and fp16, with and without probabilities, against the
    reference; the trace shows the cluster kernel ran wherever its blocks can hold the keys, else the passes."""
    T = shape[-1]
    monkeypatch.setenv("DLLM_CORE_ATTN_CLUSTER", cluster)
    for probs in (False, True):
        plan = _plan(capfd, monkeypatch, shape, probs)
        c = int(cluster)
        assert plan["cluster"] == (c if _fits(T, c) else 0), plan
        if plan["cluster"]:
            n_tiles = -(-T // 64)
            assert plan["cluster_tiles"] == -(-n_tiles // c)
            assert plan["cluster_rows"] == (32 if shape[1] * shape[2] // shape[3] <= 32 else 64)
    monkeypatch.delenv("DLLM_CORE_ATTN_TRACE")
    for dtype in (torch.bfloat16, torch.float16):
        for probs in (False, True):
            args = _inputs(shape, dtype, strided_q=dtype == torch.float16)
            got = torch.ops.dllm_core.partial_attention(*args, probs)
            torch.cuda.synchronize()
            check_attention(got, partial_attention_reference(*args, probs), dtype, probs)


@pytest.mark.parametrize("pdl", [None, "0"], ids=lambda p: f"pdl={p or 'auto'}")
@pytest.mark.parametrize("shape", [(2, 40, 8, 4, 128, 300), (3, 17, 4, 4, 64, 77)], ids=str)
def test_cluster_fully_masked_row(monkeypatch, shape, pdl):
    """A batch row with every key masked ends NaN (output and probabilities), the others match the reference;
    also with the zeroing kernel and the cluster kernel as plain stream successors (no programmatic launch)."""
    monkeypatch.setenv("DLLM_CORE_ATTN_CLUSTER", "4")
    if pdl:
        monkeypatch.setenv("DLLM_CORE_ATTN_PDL", pdl)
    for dtype in (torch.bfloat16, torch.float16):
        _check_fully_masked_row(shape, dtype)


@pytest.mark.parametrize("shape", [(1, 32, 32, 32, 128, 512), (1, 32, 28, 4, 128, 1024)], ids=str)
def test_cluster_dirty_buffers_and_graph(monkeypatch, shape):
    """The probabilities are zeroed by the call itself: right on a dirty buffer, twice, and inside a replayed
    CUDA graph (the zeroing kernel and the programmatic edge are captured)."""
    monkeypatch.setenv("DLLM_CORE_ATTN_CLUSTER", "4")
    check_eager_and_graph(lambda seed: _inputs(shape, torch.bfloat16, seed=seed))


def test_cluster_plan(capfd, monkeypatch):
    """Automatic: with probabilities, the largest cluster size <= 8 whose blocks hold at most 4 tiles and whose
    grid (B x Hkv x row tiles x size) fits one block per SM; none (the passes) when no size does, and never
    without probabilities.  0 switches it off; other values are ignored."""
    monkeypatch.delenv("DLLM_CORE_ATTN_CLUSTER", raising=False)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for shape in [(1, 32, 32, 32, 128, 512), (1, 32, 32, 32, 128, 1024), (1, 32, 32, 32, 128, 2048),
                  (1, 64, 28, 4, 128, 512), (1, 128, 28, 4, 128, 512), (1, 32, 28, 4, 128, 2048),
                  (16, 32, 32, 32, 128, 512), (1, 128, 32, 32, 128, 512)]:
        B, n, H, Hkv, _, T = shape
        M = n * H // Hkv
        rows = 32 if M <= 32 else 64
        units = B * Hkv * -(-M // rows)
        want = max([c for c in (1, 2, 4, 8) if -(-T // 64) <= c * MAX_TILES and units * c <= sms], default=0)
        assert _plan(capfd, monkeypatch, shape, True)["cluster"] == want, shape
        assert _plan(capfd, monkeypatch, shape, False)["cluster"] == 0, shape
    if sms >= 128:  # the H100's batch-1 shapes take it
        assert _plan(capfd, monkeypatch, (1, 32, 32, 32, 128, 512), True)["cluster"] == 4
    auto = _plan(capfd, monkeypatch, (1, 32, 32, 32, 128, 512), True)["cluster"]
    for value, want in (("0", 0), ("3", auto), ("32", auto)):
        monkeypatch.setenv("DLLM_CORE_ATTN_CLUSTER", value)
        assert _plan(capfd, monkeypatch, (1, 32, 32, 32, 128, 512), True)["cluster"] == want, value
