"""Dump the greedy token ids of a strategy to JSON, to compare two code versions token for token.

Uses only the public ``Engine`` API, so the same script runs against an older checkout::

    PYTHONPATH=.:plugins python benchmarks/token_dump.py --model /path/LLaDA-8B-Instruct --cache d2cache \\
        --out new.json
    (cd /tmp/old && PYTHONPATH=.:plugins python /path/to/token_dump.py ... --out old.json)
    cmp new.json old.json

Prompts: a few fixed questions (chat template) and ``--random`` prompts of random tokens of
``--prompt-length`` (the benchmark's shape), seeded.
"""

from __future__ import annotations

import argparse
import json

import torch

from dllm_core import Engine

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "What is the capital of Australia, and why is it not Sydney?",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--cache", default="d2cache")
    p.add_argument("--scheduler", default="low_confidence")
    p.add_argument("--cache-opt", action="append", default=[], help="key=value (JSON value)")
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--random", type=int, default=2, help="random-token prompts")
    p.add_argument("--prompt-length", type=int, default=700)
    p.add_argument("--eager", action="store_true", help="Engine(cuda_graphs=False)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    opts = {k: json.loads(v) for k, v in (o.split("=", 1) for o in a.cache_opt)}
    cuda = torch.cuda.is_available()
    eng = Engine(a.model, cache=a.cache, scheduler=a.scheduler, cache_options=opts, dtype="bf16" if cuda else None,
                 cuda_graphs=cuda and not a.eager)
    prompts = eng.encode(QUESTIONS, chat=True)
    g = torch.Generator().manual_seed(0)
    vocab = min(eng.model.spec.vocab_size, 30000)
    prompts += [torch.randint(100, vocab, (a.prompt_length,), generator=g).tolist() for _ in range(a.random)]
    out = {}
    for i, prompt in enumerate(prompts):
        res = eng.generate_ids([prompt], gen_length=a.gen_length, block_length=a.block_length, trace=True)
        out[str(i)] = {"tokens": res.token_ids[0], "rows": [t.rows_computed for t in res.trace]}
        print(i, res.nfe, repr(eng.tokenizer.decode(res.token_ids[0][:40])) if eng.tokenizer else "")
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
