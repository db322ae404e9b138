"""Run an evaluation task through an :class:`~dllm_core.Engine`: accuracy, speed, per-item records.

Throughput follows the project's one definition (algorithms.md §5): generated tokens up to the
first EOS (the engine's ``generated_tokens``) divided by the engine's generation wall time,
summed over batches; prompt tokens never count, and scoring time (sandboxes) is excluded.
Tokens per step is tokens per sequence per denoising step, as ``GenerationResult`` defines it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .base import Item, Task
from .tasks import get_task


def run_eval(engine: Any, task: str | Task, data_path: str | None = None, limit: int | None = None,
             batch_size: int = 1, gen_length: int | None = None, block_length: int | None = None,
             steps: int | None = None, progress: bool = True, *, temperature: float = 0.0, seed: int = 0,
             task_options: Mapping[str, Any] | None = None, keep_prompts: bool = False) -> dict[str, Any]:
    """Evaluate ``engine`` on ``task`` and return a JSON-serialisable summary.

    :param task: a task name (``testbed``, ``gsm8k``, ``humaneval``, ``mbpp``, ``math500``) or object.
    :param data_path: the benchmark file (not needed by ``testbed``, which generates its problems).
    :param limit: evaluate only the first ``limit`` items.
    :param batch_size: prompts decoded together by the engine.
    :param gen_length: tokens to generate (default: the task's, e.g. 256 for GSM8K, 64 for testbed).
    :param task_options: task-specific options, e.g. ``{"num_fewshot": 4}``, ``{"n": 1000, "seed": 0}``
        for testbed, ``{"chat": False}``.
    :param keep_prompts: include each rendered prompt in the per-item records (large for few-shot).
    :returns: ``accuracy``, ``n``, ``correct``, ``generated_tokens``, ``generation_seconds``,
        ``tokens_per_second``, ``tokens_per_step``, ``nfe`` (model calls, all batches),
        ``steps``, ``wall_seconds``, ``config`` (the engine's resolved configuration) and ``records``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t = get_task(task) if isinstance(task, str) else task
    items = t.items(engine.tokenizer, data_path, limit, **dict(task_options or {}))
    settings = {"gen_length": gen_length or t.default_gen_length, "block_length": block_length, "steps": steps,
                "temperature": temperature, "seed": seed}
    bar = _progress(len(items), t.name, progress)
    records: list[dict[str, Any]] = []
    totals = {"generated_tokens": 0, "seconds": 0.0, "nfe": 0, "steps": 0, "seq_steps": 0, "correct": 0}
    config: dict[str, Any] = {}
    wall0 = time.perf_counter()
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            res = engine.generate([i.prompt for i in batch], chat=False, progress=False, **settings)
            config = res.config or config
            completions = [t.postprocess(text) for text in res.texts]
            scores = t.score_many(batch, completions)
            totals["generated_tokens"] += res.generated_tokens
            totals["seconds"] += res.seconds
            totals["nfe"] += res.nfe
            totals["steps"] += res.steps
            totals["seq_steps"] += res.steps * len(batch)
            for item, raw, done, sc, ids in zip(batch, res.texts, completions, scores, res.token_ids):
                totals["correct"] += int(sc.correct)
                records.append(_record(item, raw, done, sc, len(ids), keep_prompts))
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix(acc=f"{totals['correct'] / len(records):.3f}",
                                tok_s=f"{totals['generated_tokens'] / max(totals['seconds'], 1e-9):.1f}")
    finally:
        if bar is not None:
            bar.close()
    n = len(records)
    return {
        "task": t.name, "n": n, "correct": totals["correct"], "accuracy": totals["correct"] / n if n else 0.0,
        "generated_tokens": totals["generated_tokens"], "generation_seconds": totals["seconds"],
        "tokens_per_second": totals["generated_tokens"] / totals["seconds"] if totals["seconds"] > 0 else 0.0,
        "tokens_per_step": totals["generated_tokens"] / max(1, totals["seq_steps"]),
        "nfe": totals["nfe"], "steps": totals["steps"], "batch_size": batch_size,
        "wall_seconds": time.perf_counter() - wall0, "settings": settings, "config": config,
        "task_options": dict(task_options or {}), "records": records,
    }


def _record(item: Item, raw: str, done: str, score: Any, n_tokens: int, keep_prompt: bool) -> dict[str, Any]:
    rec = {"id": item.id, "completion": raw, "processed": done if done != raw else None,
           "extracted": _jsonable(score.extracted) if score.extracted is not done else None,
           "target": _jsonable(item.target), "correct": bool(score.correct), "tokens": n_tokens}
    if score.detail:
        rec["detail"] = score.detail
    if keep_prompt:
        rec["prompt"] = item.prompt
    return rec


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _progress(total: int, name: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"eval {name}", unit="item")


def summary_line(result: Mapping[str, Any]) -> str:
    """One human-readable line: accuracy, throughput, tokens/step, model calls."""
    return (f"{result['task']}: accuracy {result['accuracy']:.4f} ({result['correct']}/{result['n']}), "
            f"{result['tokens_per_second']:.1f} tok/s, {result['tokens_per_step']:.2f} tokens/step, "
            f"{result['nfe']} model calls, {result['generation_seconds']:.1f} s generating")
