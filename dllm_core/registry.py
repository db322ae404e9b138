"""The component registry filled by the ``dllm_register_*`` hooks.

Each plugin's registration hook is called with its own ``register`` callback, so duplicates
and broken factories are reported with the plugin's name.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from .errors import OptionError, PluginLoadError, UnknownComponentError

#: kind -> (hook name, human name)
KINDS = {
    "cache": ("dllm_register_caches", "cache policy"),
    "scheduler": ("dllm_register_schedulers", "scheduler"),
    "guide": ("dllm_register_guides", "guide"),
    "model": ("dllm_register_models", "model family"),
}


@dataclass
class Entry:
    """One registered component."""

    kind: str
    name: str
    factory: Any  # a class or "module:Class"
    plugin: str
    description: str = ""
    aliases: tuple[str, ...] = ()

    def load(self) -> type:
        """The component class (importing a lazy ``module:Class`` reference on first use)."""
        if isinstance(self.factory, str):
            module, _, attr = self.factory.partition(":")
            try:
                obj = importlib.import_module(module)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except Exception as exc:  # noqa: BLE001
                raise PluginLoadError(
                    f"{KINDS[self.kind][1]} {self.name!r} registered by plugin {self.plugin!r} "
                    f"cannot be imported from {self.factory!r}: {type(exc).__name__}: {exc}") from exc
            self.factory = obj
        if vars(self.factory).get("name") in (None, "", self.factory.__name__):
            self.factory.name = self.name  # the registered name, unless the class chose its own
        if not self.description:
            self.description = (getattr(self.factory, "description", "") or (self.factory.__doc__ or "").strip()
                                .split("\n")[0])
        return self.factory


@dataclass
class Registry:
    """All components known to one plugin manager, by kind and name."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    aliases: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in KINDS})

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> "Registry":
        reg = cls()
        for kind, (hook_name, _) in KINDS.items():
            hook = getattr(pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
                try:
                    impl.function(register=reg._callback(kind, plugin))
                except (PluginLoadError, OptionError, UnknownComponentError):
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise PluginLoadError(
                        f"plugin {plugin!r} failed in {hook_name}: {type(exc).__name__}: {exc}") from exc
        return reg

    def _callback(self, kind: str, plugin: str):
        def register(name: str, factory: Any, *, description: str = "", aliases: Sequence[str] = ()) -> None:
            key = name.lower()
            if key in self.entries[kind] or key in self.aliases[kind]:
                other = self.entries[kind].get(key) or self.entries[kind][self.aliases[kind][key]]
                raise PluginLoadError(f"{KINDS[kind][1]} {name!r} is registered twice: by plugin "
                                      f"{other.plugin!r} and by plugin {plugin!r}")
            if not isinstance(factory, (str, type)):
                raise PluginLoadError(f"plugin {plugin!r} registered {KINDS[kind][1]} {name!r} with a "
                                      f"{type(factory).__name__}; expected a class or 'module:Class'")
            self.entries[kind][key] = Entry(kind, key, factory, plugin, description, tuple(aliases))
            for alias in aliases:
                self.aliases[kind][alias.lower()] = key
        return register

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str) -> Entry:
        key = self.aliases[kind].get(name.lower(), name.lower())
        try:
            return self.entries[kind][key]
        except KeyError:
            avail = ", ".join(self.names(kind)) or "(none installed)"
            raise UnknownComponentError(f"unknown {KINDS[kind][1]} {name!r}; available: {avail}") from None

    def create(self, kind: str, spec: Any, options: Mapping[str, Any] | None = None) -> Any:
        """Instantiate a component given by name, class or instance, with options validated."""
        if spec is None:
            return None
        if isinstance(spec, str):
            cls = self.get(kind, spec).load()
        elif isinstance(spec, type):
            cls = spec
        else:
            if options:
                raise OptionError(f"{KINDS[kind][1]} {getattr(spec, 'name', spec)!r} is already built; "
                                  "pass its options to its constructor")
            return spec
        return cls(**dict(options or {}))

    def describe(self) -> dict[str, list[dict[str, str]]]:
        """``{"caches": [{"name", "description", "plugin"}...], "schedulers": ..., "guides": ..., "models": ...}``."""
        out: dict[str, list[dict[str, str]]] = {}
        for kind in KINDS:
            items = []
            for name in self.names(kind):
                entry = self.entries[kind][name]
                try:
                    entry.load()
                except PluginLoadError as exc:
                    entry.description = f"(broken: {exc})"
                items.append({"name": name, "description": entry.description, "plugin": entry.plugin})
            out[kind + ("s" if kind != "cache" else "s")] = items
        return out
