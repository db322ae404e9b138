"""The table of docs/compatibility.md is what actually runs.

Every row of the table (cache + options, guide) is run with every scheduler on tiny random LLaDA
and Dream models; a combination must run (filling every mask) exactly when the table lists the
family, and must otherwise raise one IncompatibleStrategyError naming the objecting component.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dllm_core import Engine, IncompatibleStrategyError, Registry, make_plugin_manager
from dllm_core.testing.helpers import StateRecorder, tiny_model
from strategy_plugins import TinyCausalLM

DOC = Path(__file__).resolve().parents[1] / "docs" / "compatibility.md"
FAMILIES = {"LLaDA": "llada", "Dream": "dream"}
PROMPTS = [[3, 4, 5, 6], [7, 8]]
SETTINGS = {"gen_length": 16, "block_length": 8, "steps": 16}


def parse_table(text: str) -> tuple[list[str], list[tuple[str, str, dict[str, set[str]]]]]:
    """(scheduler names, rows of (cache cell, guide cell, {scheduler: families})) of the first table."""
    lines = [ln.strip() for ln in text.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| cache | guide |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    schedulers = header[2:]
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert len(cells) == len(header), f"row has {len(cells)} cells, header {len(header)}: {ln}"
        runs = {}
        for sched, cell in zip(schedulers, cells[2:]):
            fams = set() if cell == "no" else {FAMILIES[f.strip()] for f in cell.split(",")}
            runs[sched] = fams
        rows.append((cells[0], cells[1], runs))
    return schedulers, rows


SCHEDULERS, ROWS = parse_table(DOC.read_text())


def parse_spec(cell: str) -> tuple[str, dict[str, str]]:
    """``"freecache left=2 right=4"`` -> ``("freecache", {"left": "2", "right": "4"})``."""
    name, *opts = cell.split()
    return name, dict(o.split("=", 1) for o in opts)


def make_guide(cell: str) -> Any:
    if cell == "-":
        return None
    from dllm_plugins.ar_guide import ARGuide

    name, opts = parse_spec(cell)
    assert name == "ar", f"unknown guide in the table: {cell!r}"
    return ARGuide(causal_lm=TinyCausalLM(vocab=int(opts.get("vocab", 128))))


def test_every_registered_cache_and_scheduler_is_in_the_table() -> None:
    registry = Registry.from_plugin_manager(make_plugin_manager(autoload=False))
    caches = {parse_spec(cache)[0] for cache, _, _ in ROWS}
    assert set(registry.names("cache")) <= caches, f"caches missing from {DOC.name}: " \
        f"{sorted(set(registry.names('cache')) - caches)}"
    assert set(registry.names("scheduler")) <= set(SCHEDULERS), f"schedulers missing from {DOC.name}: " \
        f"{sorted(set(registry.names('scheduler')) - set(SCHEDULERS))}"


@pytest.mark.parametrize("family", sorted(FAMILIES.values()))
@pytest.mark.parametrize("row", range(len(ROWS)), ids=[f"{c}+{g}" for c, g, _ in ROWS])
def test_table_row(row: int, family: str) -> None:
    cache_cell, guide_cell, runs = ROWS[row]
    cache, cache_options = parse_spec(cache_cell)
    wrong = []
    for sched in SCHEDULERS:
        rec = StateRecorder()
        engine = Engine(model=tiny_model(family), cache=cache, cache_options=cache_options, scheduler=sched,
                        guide=make_guide(guide_cell), device="cpu", plugins=[rec])
        try:
            engine.generate_ids(PROMPTS, **SETTINGS)
            ran = True
        except IncompatibleStrategyError as exc:
            ran = False
            reasons = [ln for ln in str(exc).splitlines() if ln.strip().startswith("- ")]
            assert reasons, f"the error must list each objecting component: {exc}"
        if ran:
            assert not bool((rec.generated() == engine.model.spec.mask_id).any()), f"{sched}: masks left"
        if ran != (family in runs[sched]):
            wrong.append(f"{sched}: {'runs' if ran else 'raises'}")
    assert not wrong, f"{DOC.name} row '{cache_cell} | {guide_cell}' on {family} is wrong for: {', '.join(wrong)}"


def test_refusal_names_the_component_and_the_reason() -> None:
    engine = Engine(model=tiny_model("dream"), cache="freecache", cache_options={"mode": "block"},
                    guide=make_guide("ar vocab=100"), device="cpu")
    with pytest.raises(IncompatibleStrategyError) as info:
        engine.generate_ids(PROMPTS, **SETTINGS)
    msg = str(info.value)
    assert "cache 'freecache': mode 'block'" in msg
    assert "guide 'ar': the guide's vocabulary size 100 differs from the diffusion model's 128" in msg
    assert "scheduler 'low_confidence':" not in msg


def test_the_table_parser_reads_families() -> None:
    _, rows = parse_table("| cache | guide | a | b |\n|---|---|---|---|\n| x k=1 | - | LLaDA | no |\n")
    assert rows == [("x k=1", "-", {"a": {"llada"}, "b": set()})]
    assert parse_spec("x k=1") == ("x", {"k": "1"})
