"""Make the package importable from a plain checkout too (tests of an uninstalled copy)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("dllm_plugin_example") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
