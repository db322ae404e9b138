"""The plugin system: discovery, registration, errors that name the culprit."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint

import pytest

import dllm_core.plugins as plugins_mod
from dllm_core import (CachePolicy, ForwardPlan, Options, OptionError, PluginLoadError, Registry,
                       UnknownComponentError, check_range, hookimpl, make_plugin_manager)


def registry(*extra):
    return Registry.from_plugin_manager(make_plugin_manager(extra))


def test_builtins_registered_through_the_hooks():
    reg = registry()
    assert {"llada", "dream"} <= set(reg.names("model"))
    assert "none" in reg.names("cache")
    assert {"low_confidence", "random", "maskgit_plus", "topk_margin", "entropy"} <= set(reg.names("scheduler"))


def test_fresh_manager_per_call():
    assert make_plugin_manager() is not make_plugin_manager()


def test_unknown_name_lists_available():
    reg = registry()
    with pytest.raises(UnknownComponentError) as exc:
        reg.get("scheduler", "no_such_thing")
    msg = str(exc.value)
    assert "no_such_thing" in msg and "low_confidence" in msg and "maskgit_plus" in msg


class _MyCache(CachePolicy):
    description = "test cache"

    def plan(self, state):
        return ForwardPlan()


class _PluginA:
    @hookimpl
    def dllm_register_caches(self, register):
        register("mine", _MyCache)


class _PluginB:
    @hookimpl
    def dllm_register_caches(self, register):
        register("mine", _MyCache)


def test_third_party_object_plugin_registers():
    reg = registry(_PluginA())
    assert reg.get("cache", "mine").load() is _MyCache
    assert isinstance(reg.create("cache", "mine"), _MyCache)


def test_duplicate_name_names_both_plugins():
    with pytest.raises(PluginLoadError) as exc:
        registry(_PluginA(), _PluginB())
    assert "_PluginA" in str(exc.value) and "_PluginB" in str(exc.value)


class _BadLazy:
    @hookimpl
    def dllm_register_schedulers(self, register):
        register("ghost", "no_such_module_xyz:Ghost")


def test_lazy_import_failure_names_plugin_and_target():
    reg = registry(_BadLazy())
    with pytest.raises(PluginLoadError) as exc:
        reg.create("scheduler", "ghost")
    assert "_BadLazy" in str(exc.value) and "no_such_module_xyz" in str(exc.value)


class _Typo:
    @hookimpl
    def dllm_register_cahces(self, register):  # misspelt hook name
        pass


def test_misspelt_hook_fails_fast():
    with pytest.raises(PluginLoadError, match="unknown hook"):
        make_plugin_manager([_Typo()])


class _Raises:
    @hookimpl
    def dllm_register_guides(self, register):
        raise RuntimeError("boom")


def test_failing_registration_names_plugin():
    with pytest.raises(PluginLoadError, match="_Raises.*boom"):
        registry(_Raises())


def _fake_eps(monkeypatch, *eps):
    real = plugins_mod.entry_points

    def fake(group):
        return list(real(group=group)) + list(eps)

    monkeypatch.setattr(plugins_mod, "entry_points", fake)


def test_broken_entry_point_is_named(monkeypatch):
    _fake_eps(monkeypatch, EntryPoint(name="brokenplug", value="no_such_module_abc", group="dllm_core"))
    with pytest.raises(PluginLoadError) as exc:
        make_plugin_manager()
    assert "brokenplug" in str(exc.value) and "DLLM_CORE_BLOCK_PLUGINS" in str(exc.value)


def test_autoload_switch_and_blocklist(monkeypatch):
    _fake_eps(monkeypatch, EntryPoint(name="brokenplug", value="no_such_module_abc", group="dllm_core"))
    monkeypatch.setenv("DLLM_CORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = Registry.from_plugin_manager(make_plugin_manager())
    assert "none" in reg.names("cache")  # built-ins still load
    monkeypatch.delenv("DLLM_CORE_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("DLLM_CORE_BLOCK_PLUGINS", "brokenplug")
    make_plugin_manager()


@dataclass(frozen=True)
class _Opts(Options):
    k: int = 32
    p: float = 0.1
    mode: str = "a"

    def validate(self):
        check_range("k", self.k, 1)
        check_range("p", self.p, 0.0, 1.0)


def test_options_unknown_key_lists_allowed():
    with pytest.raises(OptionError) as exc:
        _Opts.from_dict({"kk": 3}, owner="cache 'x'")
    assert "kk" in str(exc.value) and "k, mode, p" in str(exc.value) and "cache 'x'" in str(exc.value)


def test_options_range_and_coercion():
    assert _Opts.from_dict({"k": "8", "p": "0.5"}) == _Opts(k=8, p=0.5)
    with pytest.raises(OptionError, match=r"'p' must be in \[0.0, 1.0\]"):
        _Opts.from_dict({"p": 2})
    with pytest.raises(OptionError, match="'k'.*expects int"):
        _Opts.from_dict({"k": "abc"})
    assert _Opts.from_dict(_Opts(k=4).to_dict()) == _Opts(k=4)


def test_component_options_validated_on_construction():
    reg = registry()
    with pytest.raises(OptionError, match="steps_per_block"):
        reg.create("scheduler", "low_confidence", {"steps_per_block": -1})
    with pytest.raises(OptionError, match="unknown option"):
        reg.create("scheduler", "maskgit_plus", {"nope": 1})
