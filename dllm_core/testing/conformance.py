"""Conformance suites that every cache policy and scheduler should pass (diffusers' ``SchedulerCommonTest`` idea).

Subclass one in a test module under a ``Test*`` name and set the class attributes::

    from dllm_core.testing.conformance import CachePolicyConformance, SchedulerConformance

    class TestPeriodic(CachePolicyConformance):
        cache = "periodic"                  # registered name, or the class itself
        cache_options = {"period": 4}       # the configuration under test
        exact_options = {"period": 1}       # where the policy must equal cache "none" exactly

    class TestLeftToRight(SchedulerConformance):
        scheduler = "left_to_right"
        scheduler_options = {"n": 2}

What is checked:

* options round-trip through JSON (``config()`` -> ``json`` -> ``from_dict``), unknown keys raise
  :class:`~dllm_core.OptionError`, and a registered name builds the component through the registry;
* generation on tiny LLaDA and Dream models either runs (every mask filled, output lengths cut at
  the first stop id, each column committed once, deterministic at temperature 0, a batch of two
  prompts of different lengths equal to their single-prompt runs) or raises
  :class:`~dllm_core.IncompatibleStrategyError` with a reason (the test is then skipped with it);
* cache policies: every plan is well formed (the first one recomputes everything) and, in
  ``exact_options``, the output equals cache ``"none"`` token for token;
* schedulers, on hand-made logits (:func:`make_state`, :func:`make_output`): commit only
  candidates, at least one per sequence that has any (unless ``commits_every_step = False``),
  greedy tokens equal the argmax (also on bfloat16 logits, the dtype real models return), the state
  is not modified, a block is finished within the engine's step limit, sampling is seeded.

Everything runs on tiny CPU models with short generations, on one intra-op thread (tiny matrices
gain nothing from more, and lose much on a busy machine): well under a second per test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pytest
import torch

from ..components import CachePolicy, Scheduler
from ..engine import Engine
from ..errors import IncompatibleStrategyError, OptionError
from ..plugins import make_plugin_manager
from ..registry import Registry
from ..result import GenerationResult
from ..state import Commit, DecodeState, ForwardPlan
from .helpers import (StateRecorder, apply_commit, build_component, candidates_of, component_class, make_engine,
                      make_output, make_state, one_thread)

__all__ = ["CachePolicyConformance", "SchedulerConformance", "make_output", "make_state"]


class _ComponentConformance:
    """Checks shared by both suites; ``kind`` is ``"cache"`` or ``"scheduler"``."""

    kind: ClassVar[str] = ""
    #: Extra plugin objects (``@hookimpl`` holders) to register, e.g. to test an unpackaged plugin by name.
    plugins: ClassVar[Sequence[object]] = ()
    #: Model families to generate with (tiny random models of each).
    families: ClassVar[Sequence[str]] = ("llada", "dream")
    #: Prompts of the batch check (token ids of the tiny vocabulary; different lengths on purpose).
    prompts: ClassVar[Sequence[Sequence[int]]] = ((3, 4, 5, 6, 7), (9, 10))
    #: Generation settings: two blocks, one token per step.
    settings: ClassVar[dict[str, Any]] = {"gen_length": 8, "block_length": 4, "steps": 8}
    #: Set False (with a comment saying why) for components that are random even at temperature 0.
    deterministic: ClassVar[bool] = True
    #: Set False for components whose decisions for one sequence depend on the rest of the batch.
    batch_invariant: ClassVar[bool] = True

    # -- what the subclass is about ------------------------------------------------------------

    def _spec(self) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def _engine(self, family: str, recorder: StateRecorder | None = None, **overrides: Any) -> Engine:
        raise NotImplementedError

    @pytest.fixture(autouse=True, scope="class")
    def _one_thread(self) -> Iterator[None]:
        with one_thread():
            yield

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "family" in metafunc.fixturenames:
            metafunc.parametrize("family", list(self.families))

    # -- options and registration --------------------------------------------------------------

    def test_options_round_trip_through_json(self) -> None:
        spec, options = self._spec()
        comp = build_component(self.kind, spec, options, self.plugins)
        config = json.loads(json.dumps(comp.config()))
        assert config["name"] == comp.name, "config() must carry the registered name"
        cls = type(comp)
        again = cls.Options.from_dict(config["options"])
        assert again == comp.options, f"{cls.__name__}.Options did not round-trip: {comp.options} -> {again}"
        assert cls(**config["options"]).options == comp.options
        assert cls.Options.from_dict(comp.options.to_dict()) == comp.options

    def test_unknown_option_is_an_error(self) -> None:
        spec, _ = self._spec()
        cls = component_class(self.kind, spec, self.plugins)
        with pytest.raises(OptionError, match="no_such_option"):
            cls.Options.from_dict({"no_such_option": 1})
        with pytest.raises(OptionError, match="no_such_option"):
            cls(no_such_option=1)

    def test_builds_by_name_through_the_registry(self) -> None:
        spec, options = self._spec()
        registry = Registry.from_plugin_manager(make_plugin_manager(self.plugins))
        if isinstance(spec, type):
            target = f"{spec.__module__}:{spec.__qualname__}"
            names = [e.name for e in registry.entries[self.kind].values() if e.factory in (spec, target)]
            if not names:
                pytest.skip(f"{spec.__name__} is given as a class and no installed plugin registers it")
            name = names[0]
        else:
            name = spec
        comp = registry.create(self.kind, name, options)
        assert isinstance(comp, CachePolicy if self.kind == "cache" else Scheduler)
        assert comp.name == registry.get(self.kind, name).name
        assert comp.options == type(comp).Options.from_dict(options)

    # -- generation ----------------------------------------------------------------------------

    def _generate(self, engine: Engine, prompts: Sequence[Sequence[int]], **overrides: Any) -> GenerationResult:
        """Run, or skip the test with the strategy's reasons when it declares itself incompatible."""
        try:
            return engine.generate_ids(prompts, **{**self.settings, **overrides})
        except IncompatibleStrategyError as exc:
            reasons = [ln for ln in str(exc).splitlines() if ln.strip().startswith("- ")]
            assert reasons and all(ln.split(":", 1)[-1].strip() for ln in reasons), \
                f"IncompatibleStrategyError must name each component and give a reason: {exc}"
            pytest.skip(f"incompatible on {engine.model.spec.family}: {' '.join(r.strip() for r in reasons)}")

    def test_generation_fills_every_mask(self, family: str) -> None:
        recorder = StateRecorder()
        engine = self._engine(family, recorder)
        res = self._generate(engine, self.prompts, trace=True)
        gen = recorder.generated()
        gen_length = self.settings["gen_length"]
        assert gen.shape == (len(self.prompts), gen_length)
        assert not bool((gen == engine.model.spec.mask_id).any()), f"masks left after generation: {gen.tolist()}"
        for ids, row in zip(res.token_ids, gen.tolist()):
            cut = next((i for i, t in enumerate(row) if t in engine.stop_ids), gen_length)
            assert ids == row[:cut], "token_ids must be the generated row cut before its first stop id"
        assert res.nfe == res.steps == len(res.trace or [])
        for b in range(len(self.prompts)):
            cols = sorted(c for t in res.trace or [] for c in t.committed[b])
            assert cols == list(range(gen_length)), f"sequence {b}: columns not committed exactly once: {cols}"

    def test_deterministic_at_temperature_zero(self, family: str) -> None:
        if not self.deterministic:
            pytest.skip("declared non-deterministic (deterministic = False)")
        recorder = StateRecorder()
        engine = self._engine(family, recorder)
        self._generate(engine, self.prompts)
        first = recorder.generated()
        self._generate(self._engine(family, recorder), self.prompts)
        assert torch.equal(first, recorder.generated()), "two greedy runs differ"

    def test_batch_equals_single_prompt_runs(self, family: str) -> None:
        if not self.batch_invariant or not self.deterministic:
            pytest.skip("declared batch-dependent or non-deterministic")
        recorder = StateRecorder()
        engine = self._engine(family, recorder)
        self._generate(engine, self.prompts)
        batch = recorder.generated()
        for i, prompt in enumerate(self.prompts):
            self._generate(engine, [prompt])
            alone = recorder.generated()[0]
            assert torch.equal(batch[i], alone), (
                f"prompt {i} in a batch gave {batch[i].tolist()} but alone {alone.tolist()}")


class CachePolicyConformance(_ComponentConformance):
    """Conformance suite of a cache policy; set ``cache`` and ``exact_options`` at least."""

    kind = "cache"
    #: The policy: registered name or class.
    cache: ClassVar[Any] = None
    #: Options of the configuration under test.
    cache_options: ClassVar[dict[str, Any]] = {}
    #: Options under which the policy must equal cache ``"none"`` exactly; ``None`` skips that check.
    exact_options: ClassVar[dict[str, Any] | None] = None
    #: The scheduler the generations use.
    scheduler: ClassVar[Any] = "low_confidence"
    scheduler_options: ClassVar[dict[str, Any]] = {}
    #: Settings of the exactness check (several block layouts and step budgets).
    exact_settings: ClassVar[Sequence[dict[str, Any]]] = (
        {"gen_length": 8, "block_length": 4, "steps": 8},
        {"gen_length": 8, "block_length": 8, "steps": 4},
    )

    def _spec(self) -> tuple[Any, dict[str, Any]]:
        if self.cache is None:
            raise TypeError(f"{type(self).__name__} must set the class attribute 'cache'")
        return self.cache, dict(self.cache_options)

    def _engine(self, family: str, recorder: StateRecorder | None = None, **overrides: Any) -> Engine:
        kw = {"cache": self.cache, "cache_options": dict(self.cache_options), "scheduler": self.scheduler,
              "scheduler_options": dict(self.scheduler_options), **overrides}
        return make_engine(family, plugins=[*self.plugins, *([recorder] if recorder else [])], **kw)

    def test_exact_options_round_trip(self) -> None:
        if self.exact_options is None:
            pytest.skip("no exact configuration declared (exact_options = None)")
        comp = build_component("cache", self.cache, self.exact_options, self.plugins)
        assert type(comp).Options.from_dict(json.loads(json.dumps(comp.options.to_dict()))) == comp.options

    def test_plans_are_well_formed(self, family: str) -> None:
        engine = self._engine(family)
        policy = engine.strategy.cache
        plan_fn = policy.plan
        seen: list[ForwardPlan] = []

        def checked(state: DecodeState) -> ForwardPlan:
            plan = plan_fn(state)
            _check_plan(plan, state, first=not seen)
            seen.append(plan)
            return plan

        policy.plan = checked  # type: ignore[method-assign]
        self._generate(engine, self.prompts)
        assert seen, "the policy was never asked for a plan"

    def test_exact_configuration_equals_no_cache(self, family: str) -> None:
        if self.exact_options is None:
            pytest.skip("no exact configuration declared (exact_options = None)")
        for settings in self.exact_settings:
            ref_rec, rec = StateRecorder(), StateRecorder()
            ref = self._engine(family, ref_rec, cache="none", cache_options=None)
            eng = self._engine(family, rec, cache_options=dict(self.exact_options))
            self._generate(ref, self.prompts, **settings)
            self._generate(eng, self.prompts, **settings)
            assert torch.equal(ref_rec.generated(), rec.generated()), (
                f"with {self.exact_options} and {settings} the policy differs from cache 'none':\n"
                f"  none: {ref_rec.generated().tolist()}\n  this: {rec.generated().tolist()}")


def _check_plan(plan: ForwardPlan, state: DecodeState, *, first: bool) -> None:
    assert isinstance(plan, ForwardPlan), f"plan() must return a ForwardPlan, got {type(plan).__name__}"
    B, T = state.batch_size, state.length
    if plan.kv_limit is not None:
        assert 0 < plan.kv_limit <= T, f"kv_limit {plan.kv_limit} outside (0, {T}]"
    if plan.logit_positions is not None:
        lp = plan.logit_positions
        assert lp.dtype == torch.long and lp.dim() == 2 and lp.shape[0] == B, f"bad logit_positions {lp.shape}"
    if plan.rows is None:
        return
    rows = plan.rows
    assert rows.dtype == torch.long and rows.dim() == 2 and rows.shape[0] == B, \
        f"rows must be (B={B}, q) long, got {tuple(rows.shape)} {rows.dtype}"
    assert bool(((rows >= 0) & (rows < T)).all()), f"rows outside [0, {T}): {rows.tolist()}"
    srt = rows.sort(dim=1).values
    assert bool((srt[:, 1:] != srt[:, :-1]).all()), f"duplicate rows: {rows.tolist()}"
    if first:  # the K/V cache starts empty: the first step must compute every real column
        covered = torch.zeros(B, T, dtype=torch.bool).scatter_(1, rows.cpu(), True)
        assert bool(covered[state.valid.cpu()].all()), "the first plan of a generation must recompute every column"


class SchedulerConformance(_ComponentConformance):
    """Conformance suite of a scheduler; set ``scheduler`` (and ``scheduler_options``)."""

    kind = "scheduler"
    #: The scheduler: registered name or class.
    scheduler: ClassVar[Any] = None
    scheduler_options: ClassVar[dict[str, Any]] = {}
    #: The cache policy the generations use.
    cache: ClassVar[Any] = "none"
    cache_options: ClassVar[dict[str, Any]] = {}
    #: Set False for schedules that may commit nothing at some steps (Dream's timestep schedule
    #: does at early steps); they must still finish each block within the engine's step limit.
    commits_every_step: ClassVar[bool] = True

    def _spec(self) -> tuple[Any, dict[str, Any]]:
        if self.scheduler is None:
            raise TypeError(f"{type(self).__name__} must set the class attribute 'scheduler'")
        return self.scheduler, dict(self.scheduler_options)

    def _engine(self, family: str, recorder: StateRecorder | None = None, **overrides: Any) -> Engine:
        kw = {"cache": self.cache, "cache_options": dict(self.cache_options), "scheduler": self.scheduler,
              "scheduler_options": dict(self.scheduler_options), **overrides}
        return make_engine(family, plugins=[*self.plugins, *([recorder] if recorder else [])], **kw)

    def _scheduler(self) -> Scheduler:
        comp = build_component("scheduler", self.scheduler, self.scheduler_options, self.plugins)
        assert isinstance(comp, Scheduler)
        return comp

    @staticmethod
    def _hand_made_state(temperature: float = 0.0, seed: int = 0) -> DecodeState:
        """Three sequences, second block current: all masked / half masked / nothing left in the block."""
        masked = [[False] * 4 + [True] * 4 + [True] * 4,
                  [False] * 4 + [True, False, True, False] + [True] * 4,
                  [False] * 4 + [False] * 4 + [True] * 4]
        return make_state((3, 5, 4), gen_length=12, block_length=4, block=1, masked=masked,
                          temperature=temperature, seed=seed)

    def _decode_block(self, state: DecodeState, steps: int = 6,
                      dtype: torch.dtype = torch.float32) -> list[tuple[Commit, torch.Tensor, torch.Tensor]]:
        """Decode the current block on fresh random logits each step; returns (commit, candidates, logits)."""
        sched = self._scheduler()
        sched.prepare(state, steps)
        sched.on_block_start(state)
        limit = 2 * state.block_length + steps + 8  # the engine's stall limit
        done = []
        for i in range(limit):
            out = make_output(state, seed=100 + i, dtype=dtype)
            cands = candidates_of(state, out.positions)
            if not bool(cands.any()):
                return done
            before = state.x.clone()
            commit = sched.select(state, out, cands)
            assert torch.equal(before, state.x), "select() must not modify the state (the engine commits)"
            done.append((commit, cands, out.logits))
            apply_commit(state, commit)
        pytest.fail(f"block not finished after {limit} steps (the engine would report a stall)")

    def test_commits_only_candidates(self) -> None:
        state = self._hand_made_state()
        for commit, cands, _ in self._decode_block(state):
            assert isinstance(commit, Commit)
            for field in ("positions", "tokens", "confidence", "mask", "candidates"):
                got = getattr(commit, field)
                assert got.shape == cands.shape, f"Commit.{field} is {tuple(got.shape)}, expected {tuple(cands.shape)}"
            assert commit.mask.dtype == torch.bool and commit.tokens.dtype == torch.long
            assert not bool((commit.mask & ~cands).any()), "committed a column that is not a candidate"
            assert bool(torch.isneginf(commit.confidence[~cands]).all()), "confidence must be -inf off candidates"
            assert not bool((commit.tokens[commit.mask] == state.mask_id).any()), "committed the mask id"
            if self.commits_every_step:
                has = cands.any(1)
                assert bool(commit.mask.any(1)[has].all()), "a sequence with candidates committed nothing"
        assert not bool(state.masked[:, state.block_start:state.block_end].any()), "block left unfinished"

    def test_greedy_tokens_are_the_argmax(self) -> None:
        state = self._hand_made_state()
        for commit, cands, logits in self._decode_block(state):
            assert torch.equal(commit.tokens[cands], logits.argmax(-1)[cands])

    def test_bfloat16_logits(self) -> None:
        """Logits come in the model's dtype (bfloat16 for real checkpoints): same rules as float32."""
        state = self._hand_made_state()
        for commit, cands, logits in self._decode_block(state, dtype=torch.bfloat16):
            assert commit.tokens.dtype == torch.long and commit.confidence.is_floating_point()
            assert not bool((commit.mask & ~cands).any()), "committed a column that is not a candidate"
            assert torch.equal(commit.tokens[cands], logits.argmax(-1)[cands])
        assert not bool(state.masked[:, state.block_start:state.block_end].any()), "block left unfinished"

    def test_sampling_is_seeded(self) -> None:
        if not self.deterministic:
            pytest.skip("declared non-deterministic (deterministic = False)")
        runs = []
        for _ in range(2):
            state = self._hand_made_state(temperature=1.0, seed=7)
            runs.append([(c.mask.clone(), c.tokens.clone()) for c, _, _ in self._decode_block(state)])
        assert len(runs[0]) == len(runs[1])
        for (m1, t1), (m2, t2) in zip(*runs):
            assert torch.equal(m1, m2) and torch.equal(t1[m1], t2[m2]), "same seed, different samples"
