"""``dllm-run bench``: the end-to-end benchmark of :mod:`dllm_core.bench` (same as ``benchmarks/e2e_bench.py``)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..bench.cli import add_parser as add

    add(subparsers)
