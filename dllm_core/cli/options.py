"""Command-line arguments shared by ``dllm-run`` (run) and ``dllm-run eval``."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import OptionError


def parse_kv(items: list[str] | None, flag: str) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``; values are coerced later by each component's options."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OptionError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def add_strategy_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --cache, --scheduler, --guide and their options, plus the generation settings."""
    g = p.add_argument_group("model and strategy")
    g.add_argument("--model", help="model directory or Hugging Face id (default: the shipped testbed model)")
    g.add_argument("--cache", default="none", help="cache policy (default: none); see `dllm-run plugins`")
    g.add_argument("--scheduler", default="low_confidence", help="unmasking scheduler (default: low_confidence)")
    g.add_argument("--guide", default=None, help="guide model plugin (default: none)")
    g.add_argument("--cache-opt", action="append", metavar="KEY=VALUE", help="cache policy option (repeatable)")
    g.add_argument("--scheduler-opt", action="append", metavar="KEY=VALUE", help="scheduler option (repeatable)")
    g.add_argument("--guide-opt", action="append", metavar="KEY=VALUE", help="guide option (repeatable)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="default: the checkpoint's")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="replay each step from captured CUDA graphs (CUDA devices only)")
    s = p.add_argument_group("generation")
    s.add_argument("--gen-length", type=int, default=None, help="tokens to generate (default: the model's generation_config.json, else 128; eval: per task)")
    s.add_argument("--block-length", type=int, default=None, help="semi-autoregressive block size (default: one block)")
    s.add_argument("--steps", type=int, default=None, help="denoising-step budget (default: gen length)")
    s.add_argument("--temperature", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the tokenizer's chat template (default: when it has one)")


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "cache": args.cache, "scheduler": args.scheduler, "guide": args.guide,
            "cache_options": parse_kv(args.cache_opt, "--cache-opt"),
            "scheduler_options": parse_kv(args.scheduler_opt, "--scheduler-opt"),
            "guide_options": parse_kv(args.guide_opt, "--guide-opt"),
            "device": args.device, "dtype": args.dtype, "cuda_graphs": args.cuda_graphs}


def generation_kwargs(args: argparse.Namespace, default_gen_length: int | None = None) -> dict[str, Any]:
    return {"gen_length": args.gen_length or default_gen_length, "block_length": args.block_length,
            "steps": args.steps, "temperature": args.temperature, "seed": args.seed}
