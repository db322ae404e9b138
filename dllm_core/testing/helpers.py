"""Building blocks of the test kit: tiny engines, hand-made decode states and model outputs.

Everything here runs on CPU in float32 and is deterministic.  The fixtures of
:mod:`dllm_core.testing.pytest_plugin` and the conformance suites of
:mod:`dllm_core.testing.conformance` are thin layers over these functions, which plugin authors
may also call directly.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..components import CachePolicy, Scheduler
from ..engine import Engine
from ..hookspecs import hookimpl
from ..models.base import DiffusionLM
from ..state import Commit, DecodeState, ForwardOutput
from .tiny import make_tiny_model

__all__ = ["StateRecorder", "apply_commit", "candidates_of", "make_engine", "make_output", "make_state",
           "one_thread", "tiny_model"]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: tiny models gain nothing from more and lose much on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def tiny_model(family: str, seed: int = 0) -> DiffusionLM:
    """A tiny random float32 model of ``family`` ("llada" or "dream"), built once per process.

    The instance is shared: do not change its weights; build your own with
    :func:`dllm_core.testing.tiny.make_tiny_model` if you must.
    """
    return make_tiny_model(family, seed=seed, dtype=torch.float32)


def make_engine(model: str | DiffusionLM = "llada", cache: Any = "none", scheduler: Any = "low_confidence",
                guide: Any = None, *, plugins: Iterable[object] = (), **opts: Any) -> Engine:
    """An :class:`Engine` on CPU over a tiny model.

    :param model: ``"llada"`` or ``"dream"`` (the shared tiny random model of that family) or a
        :class:`DiffusionLM` instance.
    :param cache, scheduler, guide: a registered name, a component class or a built component.
    :param plugins: extra plugin objects registered on the engine's plugin manager.
    :param opts: further :class:`Engine` keywords (``cache_options``, ``scheduler_options``,
        ``guide_options``, ``tokenizer``, ``dtype``).
    """
    if isinstance(model, str):
        model = tiny_model(model)
    return Engine(model=model, cache=cache, scheduler=scheduler, guide=guide, device="cpu",
                  plugins=plugins, **opts)


class StateRecorder:
    """An observer plugin that keeps the :class:`DecodeState` of the latest generation.

    The engine mutates that state in place, so after ``generate_ids`` returns ``recorder.state.x``
    holds every generated column, including those after an EOS that ``token_ids`` cuts off.
    """

    def __init__(self) -> None:
        self.state: DecodeState | None = None
        self.blocks: list[int] = []

    @hookimpl
    def dllm_generation_start(self, state: DecodeState) -> None:
        self.state = state
        self.blocks = []

    @hookimpl
    def dllm_block_end(self, state: DecodeState) -> None:
        self.blocks.append(state.block)

    def generated(self) -> Tensor:
        """(B, gen_length) token ids of the generation region of the latest generation."""
        if self.state is None:
            raise RuntimeError("no generation has started since this recorder was registered")
        st = self.state
        return st.x[:, st.gen_start:st.gen_start + st.gen_length].clone()


def make_state(prompt_lengths: Sequence[int] = (3, 5), gen_length: int = 8, block_length: int | None = None, *,
               block: int = 0, masked: Tensor | Sequence[Sequence[bool]] | None = None, vocab_size: int = 32,
               mask_id: int | None = None, eos_id: int = 1, shifted_logits: bool = False,
               temperature: float = 0.0, seed: int = 0) -> DecodeState:
    """A hand-made :class:`DecodeState` laid out as the engine lays out a batch.

    Prompts (random ids in ``[2, vocab_size - 1)``) are left-padded with ``eos_id`` so that the
    generation region starts at the same column for every row.

    :param masked: (B, gen_length) bool, which generated columns are still masked (default: all);
        unmasked ones hold random non-mask ids.
    :param mask_id: default ``vocab_size - 1``.
    :param block: the current block index (``step`` and ``step_in_block`` start at 0).
    :param temperature, seed: a positive temperature also gives the state a seeded generator.
    """
    mask_id = vocab_size - 1 if mask_id is None else mask_id
    block_length = gen_length if block_length is None else block_length
    g = torch.Generator().manual_seed(seed)
    B, P = len(prompt_lengths), max(prompt_lengths)
    T = P + gen_length
    x = torch.full((B, T), eos_id, dtype=torch.long)
    valid = torch.zeros((B, T), dtype=torch.bool)
    for i, n in enumerate(prompt_lengths):
        x[i, P - n:P] = torch.randint(2, vocab_size - 1, (n,), generator=g)
        valid[i, P - n:] = True
    gen = torch.randint(2, vocab_size - 1, (B, gen_length), generator=g)
    gen[gen == mask_id] = 2
    keep_masked = torch.ones(B, gen_length, dtype=torch.bool) if masked is None else torch.as_tensor(masked)
    if keep_masked.shape != (B, gen_length):
        raise ValueError(f"masked must be (batch={B}, gen_length={gen_length}), got {tuple(keep_masked.shape)}")
    x[:, P:] = torch.where(keep_masked.bool(), torch.full_like(gen, mask_id), gen)
    positions = (valid.long().cumsum(1) - 1).clamp_min(0)
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    return DecodeState(x=x, valid=valid, positions=positions, gen_start=P, gen_length=gen_length,
                       block_length=block_length, mask_id=mask_id, eos_id=eos_id, shifted_logits=shifted_logits,
                       temperature=temperature, generator=generator, block=block)


def make_output(state: DecodeState, logits: Tensor | None = None, *, vocab_size: int | None = None,
                seed: int = 0, scale: float = 3.0, dtype: torch.dtype = torch.float32) -> ForwardOutput:
    """A :class:`ForwardOutput` for the current block of ``state``, as a refresh would return it.

    :param logits: (B, block, V) predictions; default: seeded random logits times ``scale``
        over ``vocab_size`` (default ``state.mask_id + 1``) ids.  As the engine does, the mask
        id's logit is set to -inf.
    :param dtype: dtype of the returned logits (the engine passes the model's: bfloat16 for the
        released checkpoints).
    """
    positions = state.block_positions()
    if logits is None:
        V = state.mask_id + 1 if vocab_size is None else vocab_size
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn((*positions.shape, V), generator=g) * scale
    logits = logits.to(dtype, copy=True)
    if state.mask_id < logits.shape[-1]:
        logits[..., state.mask_id] = float("-inf")
    rows = torch.arange(state.length).unsqueeze(0).expand(state.batch_size, -1)
    return ForwardOutput(logits=logits, positions=positions, rows=rows)


def candidates_of(state: DecodeState, positions: Tensor) -> Tensor:
    """(B, r) bool: which ``positions`` are masked and inside the current block (the engine's rule)."""
    in_block = (positions >= state.block_start) & (positions < state.block_end)
    return (state.x.gather(1, positions) == state.mask_id) & in_block


def apply_commit(state: DecodeState, commit: Commit) -> Tensor:
    """Write a commit into ``state`` as the engine does and advance the step counters.

    Returns the (B, T) bool map of committed columns (also stored as ``state.last_commit``).
    """
    current = state.x.gather(1, commit.positions)
    state.x.scatter_(1, commit.positions, torch.where(commit.mask, commit.tokens, current))
    state.last_commit = commit.committed_columns(state.length)
    state.step += 1
    state.step_in_block += 1
    return state.last_commit


def component_class(kind: str, spec: Any, plugins: Iterable[object] = ()) -> type:
    """The class of a component given by registered name (through a fresh registry) or as a class."""
    if isinstance(spec, type):
        return spec
    from ..plugins import make_plugin_manager
    from ..registry import Registry

    return Registry.from_plugin_manager(make_plugin_manager(plugins)).get(kind, spec).load()


def build_component(kind: str, spec: Any, options: Mapping[str, Any] | None = None,
                    plugins: Iterable[object] = ()) -> CachePolicy | Scheduler:
    """A component instance from a name or class and its options (validated)."""
    return component_class(kind, spec, plugins)(**dict(options or {}))
