"""Entry point of the ``dllm-run`` console script.

``dllm-run "prompt"`` is short for ``dllm-run run "prompt"``.  Subcommands: run, plugins, env,
eval, bench.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import DllmError

SUBCOMMANDS = ("run", "plugins", "env", "eval", "bench")
_MODULES = {"run": "run_cmd", "plugins": "plugins_cmd", "env": "env_cmd", "eval": "eval_cmd", "bench": "bench_cmd"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dllm-run", description="Fast inference for diffusion language models.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"dllm_core.cli.{_MODULES[name]}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dllm_core.cli.{_MODULES[name]}":
                continue  # subcommand not part of this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DllmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
