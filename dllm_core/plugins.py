"""Plugin discovery: a fresh pluggy manager per engine or CLI run, never a module global.

Plugins are found through the ``dllm_core`` entry-point group; the built-in plugins of the
``dllm-core`` distribution use it too.  Environment switches:

``DLLM_CORE_DISABLE_PLUGIN_AUTOLOAD=1``
    load no third-party entry points (the built-ins still load).
``DLLM_CORE_BLOCK_PLUGINS=a,b``
    skip the named entry points.
``DLLM_CORE_TRACE_PLUGINS=1``
    print every hook call, its implementations and results to stderr.
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pluggy

from . import hookspecs
from .errors import PluginLoadError

ENTRY_POINT_GROUP = "dllm_core"
DISTRIBUTION = "dllm-core"
_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def builtin_modules() -> dict[str, str]:
    """The built-in plugin modules as ``pyproject.toml`` registers them under the entry-point group.

    Used only when running from a source tree that is not installed (then no entry points of our
    own distribution exist); reading pyproject.toml keeps one list of built-ins.
    """
    if not _PYPROJECT.is_file():
        return {}
    data = tomllib.loads(_PYPROJECT.read_text())
    return dict(data.get("project", {}).get("entry-points", {}).get(ENTRY_POINT_GROUP, {}))


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _is_builtin(ep: EntryPoint) -> bool:
    dist = getattr(ep, "dist", None)
    name = (getattr(dist, "name", "") or "").replace("_", "-").lower()
    return name == DISTRIBUTION


def make_plugin_manager(extra_plugins: Iterable[object] = (), *, autoload: bool | None = None) -> pluggy.PluginManager:
    """A new plugin manager with the hook specs, the built-ins, the installed plugins and ``extra_plugins``.

    :param autoload: load third-party entry points; default: unless
        ``DLLM_CORE_DISABLE_PLUGIN_AUTOLOAD`` is set.
    :raises PluginLoadError: naming the plugin (and its distribution) that failed to import.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if autoload is None:
        autoload = not _truthy("DLLM_CORE_DISABLE_PLUGIN_AUTOLOAD")
    blocked = {b.strip() for b in os.environ.get("DLLM_CORE_BLOCK_PLUGINS", "").split(",") if b.strip()}

    eps = list(entry_points(group=ENTRY_POINT_GROUP))
    builtins_found = any(_is_builtin(ep) for ep in eps)
    if not builtins_found:
        for name, module in builtin_modules().items():
            if name not in blocked:
                _register(pm, name, lambda m=module: importlib.import_module(m), f"built-in module {module}")
    for ep in eps:
        if ep.name in blocked or pm.get_plugin(ep.name) is not None:
            continue
        if not _is_builtin(ep) and not autoload:
            continue
        dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
        _register(pm, ep.name, ep.load, f"entry point {ep.value!r} of {dist}")
    for i, plugin in enumerate(extra_plugins):
        pm.register(plugin, name=getattr(plugin, "__name__", None) or f"extra-{i}-{type(plugin).__name__}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from exc
    if _truthy("DLLM_CORE_TRACE_PLUGINS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def _register(pm: pluggy.PluginManager, name: str, load, where: str) -> None:
    try:
        plugin = load()
        pm.register(plugin, name=name)
    except Exception as exc:  # noqa: BLE001 - any failure of a plugin is reported with its name
        raise PluginLoadError(
            f"plugin {name!r} ({where}) failed to load: {type(exc).__name__}: {exc}. "
            f"Fix or uninstall it, or skip it with DLLM_CORE_BLOCK_PLUGINS={name}") from exc
