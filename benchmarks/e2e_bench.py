#!/usr/bin/env python3
"""End-to-end decoding benchmark (see :mod:`dllm_core.bench.cli` for the options and examples).

    python benchmarks/e2e_bench.py --model llada-8b --cache dual --fixed-per-step 3.2 --out dual.json
    python benchmarks/e2e_bench.py --suite issue6 --out results.json --plot sweep.png
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "plugins"):  # runnable from a checkout without installing
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from dllm_core.bench.cli import main  # after the path set-up

if __name__ == "__main__":
    sys.exit(main())
