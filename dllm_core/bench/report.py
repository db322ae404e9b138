"""The benchmark's predefined cases, its text table and the sweep's plot."""

from __future__ import annotations

from typing import Any

from .runner import Case

#: Fast-dLLM's headline shape (design.md §6): prompt 700, gen 256, block 32.
HEADLINE: dict[str, Any] = {"prompt_length": 700, "gen_length": 256, "block_length": 32}


def suite_cases(name: str, caches: list[str]) -> list[tuple[str, Case]]:
    """(model name, case) pairs of a predefined suite; cases of unregistered caches are left out.

    ``issue6``: the shapes and schedules of design.md §6 on LLaDA-8B (batch 1 and 16) and Dream-7B.
    ``kernels``: the batch-1 cached cases and batch 16 again (to compare attention paths).
    ``quick``: the same code paths on the tiny test models (CPU smoke test).
    """
    if name == "quick":
        small: dict[str, Any] = {"prompt_length": 24, "gen_length": 32, "block_length": 8}
        pairs = [("tiny-llada", Case("none 1/step", "none", fixed_per_step=1, **small)),
                 ("tiny-llada", Case("dual 4/step", "dual", fixed_per_step=4, profile=True, **small)),
                 ("tiny-llada", Case("d2cache 1/step", "d2cache", fixed_per_step=1, **small)),
                 ("tiny-llada", Case("dual 4/step b4", "dual", fixed_per_step=4, batch_size=4, **small)),
                 ("tiny-dream", Case("dual 4/step", "dual", fixed_per_step=4, **small))]
    elif name == "issue6":
        h = HEADLINE
        pairs = [("llada-8b", Case("none 1/step", "none", fixed_per_step=1, **h)),
                 ("llada-8b", Case("none 3.2/step", "none", fixed_per_step=3.2, **h)),
                 ("llada-8b", Case("prefix 3.2/step", "prefix", fixed_per_step=3.2, **h)),
                 ("llada-8b", Case("dual 3.2/step", "dual", fixed_per_step=3.2, profile=True, **h)),
                 ("llada-8b", Case("dual 3.2/step eager", "dual", fixed_per_step=3.2, eager=True, **h)),
                 ("llada-8b", Case("d2cache 1/step", "d2cache", fixed_per_step=1, profile=True, **h)),
                 ("llada-8b", Case("freecache 3.2/step", "freecache", fixed_per_step=3.2, **h)),
                 ("llada-8b", Case("dual 3.2/step b16", "dual", fixed_per_step=3.2, batch_size=16, profile=True, **h)),
                 ("dream-7b", Case("none 3.2/step", "none", fixed_per_step=3.2, **h)),
                 ("dream-7b", Case("dual 3.2/step", "dual", fixed_per_step=3.2, profile=True, **h)),
                 ("dream-7b", Case("d2cache 1/step", "d2cache", fixed_per_step=1, **h))]
    elif name == "kernels":  # the cases that show the attention path, for a second run
        h = HEADLINE
        pairs = [("llada-8b", Case("dual 3.2/step", "dual", fixed_per_step=3.2, profile=True, **h)),
                 ("llada-8b", Case("d2cache 1/step", "d2cache", fixed_per_step=1, profile=True, **h)),
                 ("llada-8b", Case("dual 3.2/step b16", "dual", fixed_per_step=3.2, batch_size=16, **h)),
                 ("dream-7b", Case("dual 3.2/step", "dual", fixed_per_step=3.2, **h))]
    else:
        raise ValueError(f"unknown suite {name!r}")
    return [(m, c) for m, c in pairs if c.cache in caches]


def sweep_cases(lengths: list[int], caches: list[str], gen_length: int = 64) -> list[Case]:
    """One case per (cache, sequence length): prompt = length - gen, 3.2 commits per step, block 32,
    no warm-up generation (calls that captured a graph are left out of the timings)."""
    return [Case(f"sweep {cache} T={n}", cache, prompt_length=n - gen_length, gen_length=gen_length,
                 block_length=min(32, gen_length), fixed_per_step=3.2, warmup_runs=0)
            for cache in caches for n in lengths]


COLUMNS = [("model", "model", 10), ("name", "case", 22), ("batch_size", "B", 3), ("length", "T", 5),
           ("nfe", "NFE", 4), ("refresh_ms", "refresh ms", 10), ("refresh_ratio", "x floor", 7),
           ("cached_ms", "cached ms", 9), ("cached_rows_median", "rows", 5), ("cached_floor_ms", "floor ms", 8),
           ("cached_ratio", "x floor", 7), ("host_ms_per_step", "other ms", 8), ("tok_s", "tok/s", 8),
           ("peak_gib", "peak GiB", 8), ("budget_gib", "W+KV+2", 7), ("graphs", "graphs", 6)]


def _cell(res: dict[str, Any], key: str) -> str:
    if key == "cached_floor_ms":
        floor = res.get("cached_floor")
        value: Any = floor["floor_ms"] if floor else None
    else:
        value = res.get(key)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def format_table(results: list[dict[str, Any]], header: bool = True) -> str:
    """A fixed-width text table of case results (errors on their own line)."""
    lines = []
    if header:
        lines.append(" ".join(title.rjust(w) if i > 1 else title.ljust(w)
                              for i, (_, title, w) in enumerate(COLUMNS)))
    for res in results:
        if "error" in res:
            lines.append(f"{res.get('model', ''):<10} {res['name']:<22} ERROR {res['error']}")
            continue
        lines.append(" ".join(_cell(res, k).rjust(w) if i > 1 else _cell(res, k)[:w].ljust(w)
                              for i, (k, _, w) in enumerate(COLUMNS)))
    return "\n".join(lines)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The same columns as a Markdown table (for docs/benchmarks.md)."""
    head = "| " + " | ".join(t for _, t, _ in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    rows = [("| " + " | ".join(_cell(r, k) for k, _, _ in COLUMNS) + " |") for r in results if "error" not in r]
    return "\n".join([head, rule, *rows])


def plot_sweep(sweep: list[dict[str, Any]], path: str, title: str = "") -> None:
    """ms per step against sequence length for each strategy, next to the floor of the same step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    by_cache: dict[str, list[dict[str, Any]]] = {}
    for res in sweep:
        if "error" not in res:
            by_cache.setdefault(res["cache"], []).append(res)
    for cache, rows in sorted(by_cache.items()):
        rows.sort(key=lambda r: r["length"])
        xs = [r["length"] for r in rows]
        kind = "cached" if any(r["cached_ms"] for r in rows) else "refresh"
        ys = [r[f"{kind}_ms"] for r in rows]
        line, = ax.plot(xs, ys, marker="o", label=f"{cache}: {kind} step")
        floors = [float((r[f"{kind}_floor"] or {}).get("floor_ms", "nan")) for r in rows]
        ax.plot(xs, floors, linestyle="--", color=line.get_color(), label=f"{cache}: floor of that step")
        ax.plot(xs, [1.3 * f for f in floors], linestyle=":", color=line.get_color(), alpha=0.6,
                label=f"{cache}: 1.3 x floor")
    ax.set_xlabel("sequence length (prompt + generation)")
    ax.set_ylabel("ms per model call")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
