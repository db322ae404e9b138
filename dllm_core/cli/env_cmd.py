"""``dllm-run env``: torch, devices and the compiled extension's status."""

from __future__ import annotations

import argparse
import json
import platform


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="report torch, devices and the compiled extension")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def environment() -> dict:
    import torch

    from .. import __version__
    from ..ops.extension import extension_status

    cuda = torch.cuda.is_available()
    return {
        "dllm_core": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "device": "cuda" if cuda else "cpu",
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "extension": extension_status(),
    }


def run(args: argparse.Namespace) -> int:
    env = environment()
    if args.json:
        print(json.dumps(env, indent=2))
        return 0
    for key, value in env.items():
        if key != "extension":
            print(f"{key:<10} {value}")
    ext = env["extension"]
    print(f"extension  {'loaded' if ext['loaded'] else 'not loaded: ' + str(ext.get('error'))}")
    for op, impls in ext.get("ops", {}).items():
        print(f"  {op:<24} " + ", ".join(f"{dev}: {impl}" for dev, impl in impls.items()))
    return 0
