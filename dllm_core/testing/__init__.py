"""Test kit for dllm_core and its plugin authors: tiny random models, fixtures, conformance suites.

``from dllm_core.testing import CachePolicyConformance, SchedulerConformance`` works; the
submodules load lazily so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "CachePolicyConformance": "conformance", "SchedulerConformance": "conformance",
    "make_tiny_model": "tiny", "tiny_config": "tiny", "write_tiny_checkpoint": "tiny",
    "make_state": "helpers", "make_output": "helpers",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
