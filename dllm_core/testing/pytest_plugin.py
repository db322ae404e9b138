"""pytest fixtures for testing dllm_core plugins (loaded through the ``pytest11`` entry point).

Installed with ``dllm-core``, so any test suite can use:

``tiny_llada`` / ``tiny_dream``
    tiny random float32 models (vocab 128, 2 layers), shared by the session: do not modify.
``isolated_plugin_manager``
    a factory ``isolated_plugin_manager(*plugins) -> pluggy.PluginManager``: a fresh manager with
    the built-ins and the given plugin objects only (no installed third-party plugins, and the
    ``DLLM_CORE_*`` environment switches of the caller are ignored).
``isolated_registry``
    the same, returning the :class:`dllm_core.Registry` filled from such a manager.
``make_engine``
    a factory ``make_engine(model="llada", cache="none", scheduler="low_confidence", guide=None,
    *, plugins=(), **opts) -> Engine`` on CPU (``model`` is ``"llada"``, ``"dream"`` or a
    :class:`dllm_core.DiffusionLM`; ``opts`` are Engine keywords such as ``cache_options``).

pytest imports this module at start-up in every project that has ``dllm-core`` installed, so it
imports neither torch nor dllm_core at module level: the fixtures do so when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    import pluggy

    from dllm_core import DiffusionLM, Engine, Registry

_ENV_SWITCHES = ("DLLM_CORE_DISABLE_PLUGIN_AUTOLOAD", "DLLM_CORE_BLOCK_PLUGINS", "DLLM_CORE_TRACE_PLUGINS")


@pytest.fixture(scope="session")
def tiny_llada() -> "DiffusionLM":
    """A tiny random LLaDA model (float32, CPU, eval mode), shared by the session."""
    from dllm_core.testing.helpers import tiny_model

    return tiny_model("llada")


@pytest.fixture(scope="session")
def tiny_dream() -> "DiffusionLM":
    """A tiny random Dream model (float32, CPU, eval mode, shifted logits), shared by the session."""
    from dllm_core.testing.helpers import tiny_model

    return tiny_model("dream")


@pytest.fixture
def isolated_plugin_manager(monkeypatch: pytest.MonkeyPatch) -> Callable[..., "pluggy.PluginManager"]:
    """Factory: ``isolated_plugin_manager(*plugins)`` -> a fresh manager, autoload disabled.

    The manager holds the hook specs, the built-in plugins of dllm-core and ``plugins`` (objects
    or modules with ``@dllm_core.hookimpl`` functions), nothing installed by other packages.
    """
    for var in _ENV_SWITCHES:
        monkeypatch.delenv(var, raising=False)

    def factory(*plugins: object) -> "pluggy.PluginManager":
        from dllm_core import make_plugin_manager

        return make_plugin_manager(plugins, autoload=False)

    return factory


@pytest.fixture
def isolated_registry(isolated_plugin_manager: Callable[..., "pluggy.PluginManager"]) -> Callable[..., "Registry"]:
    """Factory: ``isolated_registry(*plugins)`` -> the registry of an isolated plugin manager."""

    def factory(*plugins: object) -> "Registry":
        from dllm_core import Registry

        return Registry.from_plugin_manager(isolated_plugin_manager(*plugins))

    return factory


@pytest.fixture
def make_engine() -> Callable[..., "Engine"]:
    """Factory: ``make_engine(model="llada", cache="none", scheduler="low_confidence", guide=None, **opts)``.

    Engines run on CPU over the shared tiny model of the family; installed plugins are loaded as
    in a user's run (use ``plugins=[...]`` to add unregistered ones).
    """

    def factory(model: Any = "llada", cache: Any = "none", scheduler: Any = "low_confidence", guide: Any = None,
                **opts: Any) -> "Engine":
        from dllm_core.testing.helpers import make_engine as build

        return build(model, cache, scheduler, guide, **opts)

    return factory
