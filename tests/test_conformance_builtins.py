"""Every built-in cache policy and scheduler passes the plugin author's conformance suites.

The classes are generated from whatever the built-in registry holds, so a built-in added by
another module (the Fast-dLLM caches ``prefix`` / ``dual`` and schedulers ``threshold`` /
``factor``, ``d2cache`` with ``certainty_prior``, ``freecache``) is checked as soon as it is
registered.  A cache policy's exactness check runs only for names listed in ``EXACT_OPTIONS``
(the configuration in which it must equal cache ``"none"`` token for token); others are skipped
with that reason until their exact configuration is added here.
"""

from __future__ import annotations

from typing import Any

import pytest

from dllm_core import CachePolicy, ForwardPlan, Registry, StrategyContext, make_plugin_manager
from dllm_core.testing.conformance import CachePolicyConformance, SchedulerConformance
from dllm_core.testing.helpers import one_thread

#: name -> options under which the cache policy equals full recomputation exactly.
EXACT_OPTIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "prefix": {"refresh_every": 1},
    "dual": {"refresh_every": 1},
    "d2cache": {"k": 10000, "p": 1.0},
    "freecache": {"left": 100000, "right": 100000},
}

#: Dream's timestep schedule commits ``int(m * (1 - s/t))`` tokens, which is 0 at early steps when
#: few masks are left (as upstream); it still finishes every block at its last scheduled step.
MAY_COMMIT_NOTHING = {"maskgit_plus", "topk_margin", "entropy"}

#: Random at temperature 0 (the engine gives the state no generator then, so ``random`` draws
#: from torch's global RNG) and its draws depend on the batch shape.
NON_DETERMINISTIC = {"random"}

#: Only the built-ins: installed third-party plugins are tested by their own packages.
BUILTINS = Registry.from_plugin_manager(make_plugin_manager(autoload=False))


def _suite(base: type, name: str, attrs: dict[str, Any]) -> type:
    cls = type(f"Test{base.__name__.replace('Conformance', '')}_{name}", (base,), {"__module__": __name__, **attrs})
    globals()[cls.__name__] = cls
    return cls


for _name in BUILTINS.names("cache"):
    _suite(CachePolicyConformance, _name, {"cache": _name, "exact_options": EXACT_OPTIONS.get(_name)})

for _name in BUILTINS.names("scheduler"):
    _suite(SchedulerConformance, _name, {
        "scheduler": _name,
        "commits_every_step": _name not in MAY_COMMIT_NOTHING,
        "deterministic": _name not in NON_DETERMINISTIC,
    })


def test_the_baselines_are_covered() -> None:
    names = {n.split("_", 1)[1] for n in globals() if n.startswith(("TestCachePolicy_", "TestScheduler_"))}
    assert {"none", "low_confidence", "random", "maskgit_plus", "topk_margin", "entropy"} <= names


# -- the suite itself: a policy given as a class that declines Dream, and one that is wrong -------

class _LlamaOnlyCache(CachePolicy):
    """Full recomputation, but declares itself unable to run shifted-logit (Dream) models."""

    def not_supported_reasons(self, ctx: StrategyContext) -> list[str]:
        return ["shifted logits are not supported"] if ctx.shifted_logits else []

    def plan(self, state: Any) -> ForwardPlan:
        return ForwardPlan(rows=None)


class TestConformanceOfAnUnregisteredClass(CachePolicyConformance):
    """Given as a class: the by-name check is skipped; on Dream the generation checks skip with the reason."""

    cache = _LlamaOnlyCache
    exact_options = {}


class _StaleCache(CachePolicy):
    """Wrong on purpose: after the first step only the current block is recomputed (LLaDA only)."""

    def plan(self, state: Any) -> ForwardPlan:
        return ForwardPlan(rows=None) if state.step == 0 else ForwardPlan(rows=state.block_positions())


def test_the_exactness_check_catches_a_stale_cache() -> None:
    class Suite(CachePolicyConformance):
        cache = _StaleCache
        exact_options = {}

    with one_thread(), pytest.raises(AssertionError, match="differs from cache 'none'"):
        Suite().test_exact_configuration_equals_no_cache("llada")
