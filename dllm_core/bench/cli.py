"""Command line of the end-to-end benchmark (``benchmarks/e2e_bench.py`` and ``dllm-run bench``).

Examples::

    python benchmarks/e2e_bench.py --model llada-8b --cache dual --fixed-per-step 3.2
    python benchmarks/e2e_bench.py --model llada-8b --cache none --eager --batch-size 16
    python benchmarks/e2e_bench.py --suite issue6 --out results.json --plot sweep.png
    python benchmarks/e2e_bench.py --model tiny-llada --device cpu --prompt-length 16 --gen-length 32

``--model`` takes ``llada-8b`` / ``dream-7b`` (the real configs copied to ``benchmarks/configs``),
``tiny-llada`` / ``tiny-dream`` (the test models' configs), or use ``--config path/to/config.json``.
Weights are random (bf16 on a GPU), created on the device.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from .hardware import ModelCost, build_random_model, device_info, load_config, measure_ceilings
from .report import format_table, plot_sweep, suite_cases, sweep_cases
from .runner import Case, attention_path, run_case

CONFIG_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"


def model_config(name: str | None, path: str | None) -> dict[str, Any]:
    if path:
        return load_config(path)
    if name in ("tiny-llada", "tiny-dream"):
        from ..testing.tiny import tiny_config

        return tiny_config(name.split("-", 1)[1])
    file = CONFIG_DIR / f"{name}.json"
    if not file.exists():
        raise SystemExit(f"no config for model {name!r} ({file} is missing); pass --config path/to/config.json")
    return load_config(file)


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llada-8b", help="llada-8b, dream-7b, tiny-llada, tiny-dream")
    p.add_argument("--config", help="an upstream config.json (overrides --model)")
    p.add_argument("--layers", type=int, help="override the number of layers (quick runs)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--prompt-length", type=int, default=700)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--cache", default="none")
    p.add_argument("--cache-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--scheduler", default="low_confidence")
    p.add_argument("--sched-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--fixed-per-step", type=float, default=None,
                   help="exactly n commits per step in confidence order (low_confidence, steps = gen / n)")
    p.add_argument("--steps", type=int, default=None, help="step budget when --fixed-per-step is not given")
    p.add_argument("--eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--attention", default="auto", choices=["auto", "ops", "sdpa"],
                   help="ops: the library's dispatch; sdpa: a benchmark-only SDPA override; "
                        "auto: ops when the extension has CUDA attention, else sdpa")
    p.add_argument("--profile", action="store_true", help="kernel breakdown of a cached step (torch.profiler)")
    p.add_argument("--warmup-runs", type=int, default=1)
    p.add_argument("--timed-runs", type=int, default=1)
    p.add_argument("--suite", choices=["issue6", "kernels", "quick"], help="predefined cases (see report.py)")
    p.add_argument("--sweep", default=None,
                   help="comma-separated sequence lengths, e.g. 512,1024,2048,4096 ('none': no sweep)")
    p.add_argument("--sweep-caches", default="none,dual,d2cache", help="strategies of the sweep")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--plot", help="write the sweep's plot (PNG) here")
    p.add_argument("--skip-ceilings", action="store_true", help="use nominal H100 ceilings (CPU smoke runs)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e2e_bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """``dllm-run bench``: the same benchmark."""
    p = subparsers.add_parser("bench", help="end-to-end decoding benchmark with random weights at real shapes")
    add_arguments(p)
    p.set_defaults(func=run)


def case_from_args(a: argparse.Namespace) -> Case:
    name = f"{a.cache} {a.fixed_per_step:g}/step" if a.fixed_per_step else f"{a.cache}/{a.scheduler}"
    name += f" b{a.batch_size}" if a.batch_size > 1 else ""
    return Case(name=name + (" eager" if a.eager else ""), cache=a.cache, scheduler=a.scheduler,
                cache_options=_options(a.cache_opt), scheduler_options=_options(a.sched_opt),
                batch_size=a.batch_size, prompt_length=a.prompt_length, gen_length=a.gen_length,
                block_length=a.block_length, fixed_per_step=a.fixed_per_step,
                steps=a.steps, eager=a.eager, warmup_runs=a.warmup_runs, timed_runs=a.timed_runs,
                profile=a.profile)


def _build(a: argparse.Namespace, model_name: str, device: torch.device, dtype: torch.dtype):
    config = model_config(model_name, a.config if model_name == a.model else None)
    if a.layers:
        config = {**config, ("n_layers" if "n_layers" in config else "num_hidden_layers"): a.layers}
    model = build_random_model(config, device, dtype)
    return model, ModelCost.of(model)


def _run_cases(a: argparse.Namespace, plan: list[tuple[str, Case]], device: torch.device, dtype: torch.dtype,
               ceilings: dict[str, float], results: list[dict[str, Any]], log: Any, save: Any) -> None:
    """Run ``plan`` ((model name, case) pairs), building each model once, in order; ``save()``
    after every case, so a run cut short keeps what it measured."""
    current: str | None = None
    model: Any = None
    cost: Any = None
    for model_name, case in plan:
        if model_name != current:
            model = cost = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            model, cost = _build(a, model_name, device, dtype)
            current = model_name
            print(f"# built {model_name}: {cost.weight_bytes / 1e9:.2f} GB of weights, "
                  f"{cost.read_bytes / 1e9:.2f} GB read per step", file=log, flush=True)
        try:
            res = run_case(model, case, cost, ceilings, device)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other cases
            res = {"name": case.name, "error": f"{type(exc).__name__}: {exc}"}
        res["model"] = model_name
        results.append(res)
        print(format_table([res], header=True), file=log, flush=True)
        if res.get("profile"):
            print(f"#   profile of a cached step: {json.dumps(res['profile'])}", file=log, flush=True)
        save()


def run(a: argparse.Namespace) -> int:
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    if device.type == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # CPU smoke runs: bf16 matmuls are slow and pointless there
    log = sys.stdout
    command = " ".join(shlex.quote(x) for x in sys.argv)
    info = device_info(device)
    try:
        from ..ops import extension_status

        info["extension"] = {op: v.get(device.type) for op, v in extension_status().get("ops", {}).items()}
    except Exception as exc:  # noqa: BLE001 - informational only
        info["extension"] = f"unknown ({type(exc).__name__})"
    print(f"# command: {command}\n# {json.dumps(info)}", file=log, flush=True)
    ceilings = ({"copy_bandwidth": 3.0e12, "matmul_flops": 7.0e14, "nominal": True} if a.skip_ceilings
                else measure_ceilings(device))
    print(f"# ceilings: copy {ceilings['copy_bandwidth'] / 1e12:.3f} TB/s (read + write), "
          f"bf16 matmul {ceilings['matmul_flops'] / 1e12:.1f} TFLOP/s", file=log, flush=True)
    results: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    payload: dict[str, Any] = {"command": command, "env": info, "ceilings": ceilings, "cases": results,
                               "sweep": sweep}

    def save() -> None:
        if a.out:
            Path(a.out).write_text(json.dumps(payload, indent=1, default=str))

    with attention_path(a.attention, device.type) as attn:
        payload["attention"] = attn
        print(f"# attention path: {attn}", file=log, flush=True)
        if a.suite:
            plan = suite_cases(a.suite, available_caches())
        elif a.sweep is None:
            plan = [(a.model, case_from_args(a))]
        else:
            plan = []
        _run_cases(a, plan, device, dtype, ceilings, results, log, save)
        lengths = a.sweep or ("512,1024,2048,3072,4096" if a.suite == "issue6" else None)
        if lengths and lengths != "none":
            caches = [c for c in a.sweep_caches.split(",") if c in available_caches()]
            model_name = {"quick": "tiny-llada"}.get(a.suite or "", "llada-8b" if a.suite else a.model)
            gen = a.gen_length if not a.suite or a.suite == "quick" else 64
            _run_cases(a, [(model_name, c) for c in sweep_cases([int(x) for x in lengths.split(",")], caches, gen)],
                       device, dtype, ceilings, sweep, log, save)
    print("\n" + format_table(results + sweep), file=log, flush=True)
    save()
    if a.plot and sweep:
        try:
            plot_sweep(sweep, a.plot, title=f"{info.get('gpu') or device}, {attn}")
        except ImportError as exc:
            print(f"# no plot: {exc} (pip install matplotlib)", file=log)
    return 0 if all("error" not in r for r in results + sweep) else 1


def available_caches() -> list[str]:
    from ..plugins import make_plugin_manager
    from ..registry import Registry

    return Registry.from_plugin_manager(make_plugin_manager()).names("cache")


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
