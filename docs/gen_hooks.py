"""Write docs/hooks.md from the docstrings of dllm_core/hookspecs.py (the single source of truth).

Run ``python docs/gen_hooks.py`` after changing a hook spec; ``tests/test_docs.py`` fails while
docs/hooks.md is out of date.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from types import FunctionType

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

from dllm_core import hookspecs  # noqa: E402

SPEC_MARK = f"{hookspecs.PROJECT}_spec"


def hook_functions() -> list[FunctionType]:
    """The hook specs in source order."""
    specs = [f for _, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, SPEC_MARK)]
    return sorted(specs, key=lambda f: f.__code__.co_firstlineno)


def signature(func: FunctionType) -> str:
    """``name(arg1, arg2)``: the form a plugin's implementation takes (any subset of the arguments)."""
    return f"{func.__name__}({', '.join(inspect.signature(func).parameters)})"


def spec_options(func: FunctionType) -> list[str]:
    opts = getattr(func, SPEC_MARK) or {}
    return [name for name in ("firstresult", "historic") if opts.get(name)]


def to_markdown(doc: str) -> str:
    """The few reST constructs of the docstrings in Markdown: roles, literals, ``:param:`` lists, ``::``."""
    doc = re.sub(r":(?:class|func|meth|mod|attr|exc):`~?([^`]+)`", r"`\1`", doc)
    doc = re.sub(r"``([^`]+)``", r"`\1`", doc)
    doc = re.sub(r"^:param (\w+):", r"- `\1`:", doc, flags=re.M)
    doc = re.sub(r"^:returns?:", "- returns:", doc, flags=re.M)
    return re.sub(r"(\S)::$", r"\1:", doc, flags=re.M)


def render() -> str:
    out = ["# Hook reference", "",
           "<!-- Generated from dllm_core/hookspecs.py by `python docs/gen_hooks.py`; do not edit by hand. -->", "",
           to_markdown(inspect.cleandoc(hookspecs.__doc__ or "")), "",
           "Implement a hook with a function of the same name marked `@dllm_core.hookimpl`; it may take any",
           "subset of the arguments, by name. See [plugins.md](plugins.md) for the guide.", ""]
    groups = (("Registration hooks", True), ("Observer hooks", False))
    for title, registration in groups:
        out += [f"## {title}", ""]
        for func in hook_functions():
            if func.__name__.startswith("dllm_register_") != registration:
                continue
            out += [f"### {signature(func)}", ""]
            opts = spec_options(func)
            if opts:
                out += [f"Spec options: {', '.join(opts)}.", ""]
            out += [to_markdown(inspect.getdoc(func) or "(undocumented)"), ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    (DOCS / "hooks.md").write_text(render())
    print(f"wrote {DOCS / 'hooks.md'}")
