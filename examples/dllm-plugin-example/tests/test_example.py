"""Tests of the example plugin: dllm_core's conformance suites plus the plugin's own behaviour.

Run with ``python -m pytest examples/dllm-plugin-example/tests`` (from the dllm_core checkout) or
``python -m pytest`` inside the example's directory.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

import dllm_plugin_example
from dllm_core import OptionError, Registry, make_plugin_manager
from dllm_core.testing.conformance import CachePolicyConformance, SchedulerConformance
from dllm_core.testing.helpers import candidates_of, make_output, make_state

INSTALLED = any(ep.name == "example" and ep.value == "dllm_plugin_example"
                for ep in entry_points(group="dllm_core"))
needs_install = pytest.mark.skipif(
    not INSTALLED, reason="dllm-plugin-example is not installed, so its entry point cannot be checked: "
                          "pip install --no-build-isolation -e examples/dllm-plugin-example")
#: Installed, the entry point registers the plugin in every engine; otherwise register it by hand.
PLUGINS = () if INSTALLED else (dllm_plugin_example,)


# -- the conformance suites of dllm_core ----------------------------------------------------------

class TestPeriodicConformance(CachePolicyConformance):
    cache = "periodic"
    cache_options = {"period": 3}
    exact_options = {"period": 1}
    plugins = PLUGINS


class TestPeriodicWithMaskGitConformance(CachePolicyConformance):
    cache = "periodic"
    cache_options = {"period": 2}
    exact_options = {"period": 1}
    scheduler = "maskgit_plus"
    plugins = PLUGINS


class TestLeftToRightConformance(SchedulerConformance):
    scheduler = "left_to_right"
    plugins = PLUGINS


class TestLeftToRightChunksConformance(SchedulerConformance):
    scheduler = "left_to_right"
    scheduler_options = {"n": 3}
    cache = "periodic"
    cache_options = {"period": 1}
    plugins = PLUGINS


# -- discovery through the installed entry point --------------------------------------------------

@needs_install
def test_entry_point_registers_the_names_in_a_fresh_registry() -> None:
    reg = Registry.from_plugin_manager(make_plugin_manager())
    assert "periodic" in reg.names("cache") and "left_to_right" in reg.names("scheduler")
    assert reg.get("cache", "periodic").plugin == "example"
    assert reg.get("scheduler", "l2r").name == "left_to_right"  # the alias


@needs_install
def test_entry_point_obeys_the_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "periodic" not in Registry.from_plugin_manager(make_plugin_manager(autoload=False)).names("cache")
    monkeypatch.setenv("DLLM_CORE_BLOCK_PLUGINS", "example")
    assert "periodic" not in Registry.from_plugin_manager(make_plugin_manager()).names("cache")


@needs_install
def test_engine_fixture_finds_the_plugin(make_engine) -> None:  # fixture of dllm_core's pytest plugin
    engine = make_engine("dream", cache="periodic", scheduler="left_to_right", scheduler_options={"n": 2})
    res = engine.generate_ids([[3, 4, 5]], gen_length=8, block_length=4)
    assert res.nfe == 4 and engine.strategy.config()["cache"] == {"name": "periodic", "options": {"period": 4}}


# -- the plugin's own behaviour ---------------------------------------------------------------------

def _registry() -> Registry:
    return Registry.from_plugin_manager(make_plugin_manager(PLUGINS))


def test_options_are_validated() -> None:
    reg = _registry()
    with pytest.raises(OptionError, match="period"):
        reg.create("cache", "periodic", {"period": 0})
    with pytest.raises(OptionError, match="'n'"):
        reg.create("scheduler", "left_to_right", {"n": 0})


def test_left_to_right_commits_the_leftmost_candidates() -> None:
    sched = _registry().create("scheduler", "left_to_right", {"n": 2})
    state = make_state((3, 5), gen_length=6, masked=[[False, True, True, True, False, True], [True] * 6])
    sched.prepare(state, steps=6)
    out = make_output(state)
    commit = sched.select(state, out, candidates_of(state, out.positions))
    assert commit.mask.tolist() == [[False, True, True, False, False, False],
                                    [True, True, False, False, False, False]]


def test_periodic_plans_refresh_then_the_block() -> None:
    cache = _registry().create("cache", "periodic", {"period": 2})
    for shifted, first in ((False, 9), (True, 8)):  # Dream also needs the row before the block
        state = make_state((3, 5), gen_length=8, block_length=4, block=1, shifted_logits=shifted)
        cache.on_block_start(state)  # prompts left-padded to 5 columns: block 1 = columns 9..12
        plans = []
        for step in range(4):
            state.step_in_block = step
            plans.append(cache.plan(state))
        assert [p.is_refresh for p in plans] == [True, False, True, False]
        assert plans[1].rows.tolist() == [list(range(first, 13))] * 2
