"""``dllm-run plugins``: list installed cache policies, schedulers, guides and model families."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list installed components")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..plugins import make_plugin_manager
    from ..registry import Registry

    pm = make_plugin_manager()
    described = Registry.from_plugin_manager(pm).describe()
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for kind, items in described.items():
        print(f"{kind}:")
        for item in items:
            print(f"  {item['name']:<16} {item['description']}  [{item['plugin']}]")
    return 0
