"""The documentation is tested (datasette style): every hook and every built-in component is documented."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import pytest

from dllm_core import Registry, hookspecs, make_plugin_manager
from dllm_core.registry import KINDS

DOCS = Path(__file__).resolve().parents[1] / "docs"
SPEC_MARK = f"{hookspecs.PROJECT}_spec"
HOOKS = sorted(name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, SPEC_MARK))


def _headings(text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+)$", text, flags=re.M)]


def test_every_hook_spec_is_found() -> None:
    pm = make_plugin_manager(autoload=False)
    assert set(HOOKS) == {name for name in dir(pm.hook) if name.startswith("dllm_")}
    assert {"dllm_register_caches", "dllm_register_schedulers", "dllm_generation_end"} <= set(HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented_with_its_signature(name: str) -> None:
    func = getattr(hookspecs, name)
    assert (func.__doc__ or "").strip(), f"hook spec {name} has no docstring (it is the reference doc)"
    signature = f"{name}({', '.join(inspect.signature(func).parameters)})"
    headings = _headings((DOCS / "hooks.md").read_text())
    assert any(signature in h for h in headings), f"docs/hooks.md lacks a heading with `{signature}`"


def test_hooks_md_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("gen_hooks", DOCS / "gen_hooks.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (DOCS / "hooks.md").read_text() == gen.render(), \
        "docs/hooks.md is out of date with dllm_core/hookspecs.py: run `python docs/gen_hooks.py`"


def _builtin_names() -> list[tuple[str, str]]:
    reg = Registry.from_plugin_manager(make_plugin_manager(autoload=False))
    return [(kind, name) for kind in KINDS for name in reg.names(kind)]


@pytest.mark.parametrize(("kind", "name"), _builtin_names())
def test_builtin_component_is_documented(kind: str, name: str) -> None:
    docs = "\n".join(p.read_text() for p in sorted(DOCS.rglob("*.md")))
    assert f"`{name}`" in docs, f"built-in {KINDS[kind][1]} `{name}` is not mentioned (in backticks) under docs/"


def test_plugin_guide_covers_the_essentials() -> None:
    text = (DOCS / "plugins.md").read_text()
    for needle in ("register(", "module:Class", "Options", "not_supported_reasons", "DLLM_CORE_DISABLE_PLUGIN_AUTOLOAD",
                   "DLLM_CORE_BLOCK_PLUGINS", "DLLM_CORE_TRACE_PLUGINS", "CachePolicyConformance",
                   "SchedulerConformance", "examples/dllm-plugin-example", "hooks.md"):
        assert needle in text, f"docs/plugins.md does not mention {needle}"
