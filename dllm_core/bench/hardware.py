"""The two ceilings of the device, random-weight models at real shapes, and the floor of a step.

The floor of a partial forward is the larger of two times: every byte it must read once over the
measured copy bandwidth (all weights except the input embedding table, of which only the rows'
embeddings are gathered, plus the whole K/V cache that attention reads), and its matrix FLOPs over
the measured bf16 matmul rate.  At batch 1 with a few dozen rows the first term dominates; for a
full forward (a refresh, or no cache) or batch 16 the second does.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.base import DiffusionLM
from ..models.dream import DreamModel
from ..models.llada import LLaDAModel
from ..models.transformer import RMSNorm

FAMILIES: tuple[type[DiffusionLM], ...] = (LLaDAModel, DreamModel)


def device_info(device: torch.device) -> dict[str, Any]:
    """GPU name, torch and CUDA versions (what a benchmark report must state)."""
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, sms=p.multi_processor_count, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version())
    else:
        info["gpu"] = None
    return info


def time_ms(fn: Callable[[], Any], device: torch.device, reps: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` (CUDA events on a GPU, the host clock on a CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_ceilings(device: torch.device, copy_bytes: int = 1 << 30, matmul_n: int = 8192) -> dict[str, float]:
    """Device-to-device copy bandwidth (bytes read + written per second) and bf16 matmul FLOP/s,
    both on random data (zeros can run faster than real data)."""
    if device.type != "cuda":
        copy_bytes, matmul_n = min(copy_bytes, 1 << 26), min(matmul_n, 512)
    n = copy_bytes // 2
    copy_ms = _copy_ms(n, device)
    mm_ms = _matmul_ms(matmul_n, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"copy_bandwidth": 2 * n * 2 / (copy_ms * 1e-3), "matmul_flops": 2 * matmul_n ** 3 / (mm_ms * 1e-3),
            "copy_gib": 2 * n * 2 / 2**30, "matmul_n": matmul_n}


def _copy_ms(n: int, device: torch.device) -> float:
    src = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    return time_ms(lambda: dst.copy_(src), device)


def _matmul_ms(size: int, device: torch.device) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = [torch.randn(size, size, device=device, dtype=dtype) for _ in range(2)]
    b = [torch.randn(size, size, device=device, dtype=dtype) for _ in range(2)]
    i = [0]

    def mm() -> None:  # rotate between two input sets
        i[0] ^= 1
        torch.mm(a[i[0]], b[i[0]])

    return time_ms(mm, device)


# -- models ---------------------------------------------------------------------------------------

def load_config(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def family_for(config: dict[str, Any]) -> type[DiffusionLM]:
    for cls in FAMILIES:
        if cls.matches_config(config):
            return cls
    raise ValueError(f"config.json matches no built-in family ({', '.join(c.family for c in FAMILIES)})")


def build_random_model(config: dict[str, Any], device: torch.device, dtype: torch.dtype = torch.bfloat16,
                       seed: int = 0, std: float = 0.02) -> DiffusionLM:
    """The model of ``config`` with random weights, created directly on ``device`` in ``dtype``
    (built on the meta device, then materialised: no float32 or host copy of an 8B model)."""
    cls = family_for(config)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std, generator=gen)
                bias = getattr(module, "bias", None)
                if isinstance(bias, torch.Tensor):
                    bias.normal_(0.0, std, generator=gen)
    fuse = getattr(model, "fuse_projections", None)
    if callable(fuse):  # as load_model does: fused [q; k; v] and [gate; up] weights
        fuse()
    return model.eval()


@dataclass(frozen=True)
class ModelCost:
    """Bytes and FLOPs of a model's partial forward."""

    weight_bytes: int           #: all parameters
    read_bytes: int             #: parameters a partial forward reads (input embedding table excluded)
    layer_params: int           #: matrix parameters of the decoder layers (every row multiplies them)
    head_params: int            #: LM head (only the logit rows multiply it)
    kv_bytes_per_token: int     #: K and V of one column, all layers
    num_layers: int
    num_heads: int
    head_dim: int

    @classmethod
    def of(cls, model: DiffusionLM) -> ModelCost:
        head: torch.Tensor = model.head_weight()  # type: ignore[attr-defined,operator]
        params = list(model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in params)
        embedding_only = [m.weight for m in model.modules()
                          if isinstance(m, nn.Embedding) and m.weight.data_ptr() != head.data_ptr()]
        read = weight_bytes - sum(w.numel() * w.element_size() for w in embedding_only)
        layer = sum(m.weight.numel() for m in model.modules()
                    if isinstance(m, nn.Linear) and m.weight.data_ptr() != head.data_ptr())
        s = model.spec
        elem = params[0].element_size()
        return cls(weight_bytes, read, layer, head.numel(), 2 * s.num_layers * s.num_kv_heads * s.head_dim * elem,
                   s.num_layers, s.num_heads, s.head_dim)

    def kv_bytes(self, batch: int, length: int) -> int:
        return self.kv_bytes_per_token * batch * length

    def flops(self, batch: int, rows: int, logits: int, length: int) -> float:
        """Matrix FLOPs of a partial forward: projections and MLP for every row, attention of every
        row over ``length`` columns (QK^T and PV), the LM head for the logit rows."""
        attn = 4.0 * rows * length * self.num_heads * self.head_dim * self.num_layers
        return batch * (2.0 * rows * self.layer_params + attn + 2.0 * logits * self.head_params)

    def floor_ms(self, ceilings: dict[str, float], batch: int, rows: int, logits: int, length: int) -> dict[str, Any]:
        """The floor of one step and its two terms (milliseconds)."""
        read = (self.read_bytes + self.kv_bytes(batch, length)) / ceilings["copy_bandwidth"] * 1e3
        compute = self.flops(batch, rows, logits, length) / ceilings["matmul_flops"] * 1e3
        return {"floor_ms": max(read, compute), "read_ms": read, "compute_ms": compute,
                "bound": "memory" if read >= compute else "compute"}


def memory_budget_bytes(cost: ModelCost, batch: int, length: int, constant: float = 2 * 2**30) -> float:
    """What the design allows at peak: weights + K/V cache + a small constant (2 GiB)."""
    return cost.weight_bytes + cost.kv_bytes(batch, length) + constant


def gib(n: float) -> float:
    return round(n / 2**30, 2) if not math.isnan(n) else n
