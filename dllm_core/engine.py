"""The denoising engine: a model composed with a cache policy, a scheduler and an optional guide.

The engine resolves its components once (by name through the plugin registry, or as given)
and then calls them directly in the step loop; pluggy is used only to discover components and
to notify observers at generation and block boundaries.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .components import CachePolicy, Guide, Scheduler, StrategyContext
from .errors import DllmError, OptionError, PromptTooLongError
from .models.base import DiffusionLM
from .plugins import make_plugin_manager
from .registry import Registry
from .result import GenerationResult, StepTrace
from .state import DecodeState
from .strategy import Strategy

#: The model ``dllm-run`` uses when none is given: the project's own trained testbed model.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "testbed-llada"


def default_model_dir() -> Path:
    """The shipped default model, or a clear error while it is not there."""
    if (DEFAULT_MODEL_DIR / "config.json").exists():
        return DEFAULT_MODEL_DIR
    raise DllmError(f"no default model is shipped in this installation ({DEFAULT_MODEL_DIR} is missing); "
                    "pass a model directory or Hugging Face id, e.g. --model GSAI-ML/LLaDA-8B-Instruct")


class Engine:
    """Compose and run a decoding strategy.

    :param model: a model directory, a Hugging Face hub id, or a :class:`DiffusionLM` instance;
        ``None`` takes the project's shipped default model.
    :param cache, scheduler, guide: a registered name, a component class or a built component.
    :param cache_options, scheduler_options, guide_options: options for components given by name
        or class; unknown keys and out-of-range values raise :class:`OptionError`.
    :param tokenizer: needed only with a model instance and text prompts.
    :param device, dtype: where and in which precision to run (default: CUDA when available,
        else CPU; the checkpoint's dtype).
    :param plugins: extra plugin objects to register (in addition to installed ones).
    :param cuda_graphs: replay captured CUDA graphs of the model's partial forward (one graph per
        plan shape; see :mod:`dllm_core.cuda_graphs`), and let components replay their per-step
        work from graphs (``DecodeState.cuda_graphs``); False runs everything eagerly.
    """

    def __init__(self, model: str | Path | DiffusionLM | None = None, cache: Any = "none",
                 scheduler: Any = "low_confidence", guide: Any = None, *,
                 cache_options: Mapping[str, Any] | None = None, scheduler_options: Mapping[str, Any] | None = None,
                 guide_options: Mapping[str, Any] | None = None, tokenizer: Any = None,
                 device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                 plugins: Iterable[object] = (), cuda_graphs: bool = False) -> None:
        self.plugin_manager = make_plugin_manager(plugins)
        self.registry = Registry.from_plugin_manager(self.plugin_manager)
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.model_dir: Path | None = None
        self.model, self.tokenizer = self._load(model, tokenizer, dtype)
        self.strategy = Strategy(
            cache=self.registry.create("cache", cache, cache_options),
            scheduler=self.registry.create("scheduler", scheduler, scheduler_options),
            guide=self.registry.create("guide", guide, guide_options))
        self.stop_ids = self._stop_ids()
        self.forward = self.model
        self.cuda_graphs = bool(cuda_graphs)
        if cuda_graphs:
            if self.device.type != "cuda":
                raise OptionError("option 'cuda_graphs' needs a CUDA device")
            from .cuda_graphs import GraphedForward

            self.forward = GraphedForward(self.model)

    # -- construction ------------------------------------------------------------------------

    def _load(self, model: Any, tokenizer: Any, dtype: Any) -> tuple[DiffusionLM, Any]:
        from .models.loading import load_model, load_tokenizer, resolve_model_dir

        if isinstance(dtype, str):
            dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                     "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}.get(dtype.lower(), dtype)
            if isinstance(dtype, str):
                raise OptionError(f"option 'dtype' must be one of bf16, fp16, fp32, got {dtype!r}")
        if isinstance(model, DiffusionLM):
            if dtype is not None:
                model = model.to(dtype=dtype)
            return model.to(self.device).eval(), tokenizer
        path = resolve_model_dir(default_model_dir() if model is None else model)
        self.model_dir = Path(path)
        families = {name: self.registry.get("model", name).load() for name in self.registry.names("model")}
        loaded = load_model(path, families, dtype=dtype, device=self.device).eval()
        if tokenizer is None:
            tokenizer = load_tokenizer(path)
        return loaded, tokenizer

    def _generation_config(self) -> dict[str, Any]:
        path = self.model_dir / "generation_config.json" if self.model_dir is not None else None
        return json.loads(path.read_text()) if path is not None and path.exists() else {}

    def _stop_ids(self) -> set[int]:
        ids = {int(self.model.spec.eos_id)}
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        gen_eos = self._generation_config().get("eos_token_id")
        ids.update([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []))
        return ids

    @property
    def default_gen_length(self) -> int:
        """``gen_length`` (or ``max_new_tokens``) of the model's generation_config.json, else 128."""
        cfg = self._generation_config()
        return int(cfg.get("gen_length") or cfg.get("max_new_tokens") or 128)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **kwargs: Any) -> "Engine":
        """Rebuild an engine from the ``config`` printed with a result (``result.config``)."""
        strat = config["strategy"]
        guide = strat.get("guide")
        return cls(model=kwargs.pop("model", config.get("model")),
                   cache=strat["cache"]["name"], cache_options=strat["cache"]["options"],
                   scheduler=strat["scheduler"]["name"], scheduler_options=strat["scheduler"]["options"],
                   guide=guide["name"] if guide else None, guide_options=guide["options"] if guide else None,
                   **kwargs)

    # -- generation --------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str], chat: bool | None = None) -> list[list[int]]:
        """Token ids of the prompts (chat template applied when ``chat`` is True, or None and one exists)."""
        if self.tokenizer is None:
            raise DllmError("text prompts need a tokenizer; pass tokenizer= or use generate_ids()")
        from .models.chat import render_prompt

        return [self.tokenizer(render_prompt(self.tokenizer, p, chat), add_special_tokens=False)["input_ids"]
                for p in prompts]

    def generate(self, prompts: str | Sequence[str], *, chat: bool | None = None, **settings: Any) -> GenerationResult:
        """Generate a continuation for each prompt; see :meth:`generate_ids` for the settings."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.generate_ids(self.encode(list(prompts), chat), **settings)

    def settings(self, *, gen_length: int | None = None, block_length: int | None = None, steps: int | None = None,
                 temperature: float = 0.0, seed: int = 0) -> dict[str, Any]:
        """Validated generation settings (defaults filled in)."""
        if gen_length is None:
            gen_length = self.default_gen_length
        if gen_length < 1:
            raise OptionError(f"option 'gen_length' must be >= 1, got {gen_length}")
        block_length = gen_length if block_length is None else block_length
        if not 1 <= block_length <= gen_length:
            raise OptionError(f"option 'block_length' must be in [1, gen_length={gen_length}], got {block_length}")
        steps = gen_length if steps is None else steps
        if steps < 1:
            raise OptionError(f"option 'steps' must be >= 1, got {steps}")
        if temperature < 0:
            raise OptionError(f"option 'temperature' must be >= 0, got {temperature}")
        return {"gen_length": gen_length, "block_length": block_length, "steps": steps,
                "temperature": float(temperature), "seed": int(seed)}

    def check(self, batch_size: int = 1, **settings: Any) -> None:
        """Raise :class:`IncompatibleStrategyError` if the strategy cannot run with these settings."""
        s = self.settings(**settings)
        self.strategy.check(self._context(batch_size, s))

    def _context(self, batch_size: int, s: Mapping[str, Any]) -> StrategyContext:
        spec = self.model.spec
        return StrategyContext(model_family=spec.family, shifted_logits=spec.shifted_logits, batch_size=batch_size,
                               gen_length=s["gen_length"], block_length=s["block_length"], steps=s["steps"],
                               temperature=s["temperature"], cache=self.strategy.cache,
                               scheduler=self.strategy.scheduler, guide=self.strategy.guide,
                               vocab_size=spec.vocab_size, tokenizer=self.tokenizer, cuda_graphs=self.cuda_graphs)

    @torch.inference_mode()
    def generate_ids(self, input_ids: Sequence[Sequence[int]], *, gen_length: int | None = None,
                     block_length: int | None = None, steps: int | None = None, temperature: float = 0.0,
                     seed: int = 0, trace: bool = False, progress: bool | None = None) -> GenerationResult:
        """Decode ``gen_length`` masked tokens after each prompt (default: the model's
        generation_config.json ``gen_length`` / ``max_new_tokens``, else 128).

        :param block_length: semi-autoregressive block size (default: one block).
        :param steps: total denoising-step budget for fixed-schedule schedulers (default: gen_length).
        :param temperature: 0 is greedy; otherwise tokens are sampled from a generator seeded by ``seed``.
        :param trace: record which columns each step committed.
        :param progress: show a progress bar (default: when stderr is a terminal).
        """
        s = self.settings(gen_length=gen_length, block_length=block_length, steps=steps,
                          temperature=temperature, seed=seed)
        prompts = [list(map(int, p)) for p in input_ids]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise OptionError("every prompt must have at least one token")
        self._check_length(prompts, s["gen_length"])
        self.strategy.check(self._context(len(prompts), s))
        state = self._initial_state(prompts, s)
        config = self.config(s)
        t0 = time.perf_counter()
        result = _DecodeLoop(self, state, s, trace, progress).run()
        seconds = time.perf_counter() - t0
        texts, ids, n_tokens = self._outputs(state)
        out = GenerationResult(texts=texts, token_ids=ids, nfe=result["nfe"], steps=result["steps"],
                               seconds=seconds, generated_tokens=n_tokens, config=config,
                               trace=result["trace"], timings={"decode": seconds},
                               stats=_jsonable(state.extras))
        out.committed_tokens = result["committed"]  # type: ignore[attr-defined]
        self.plugin_manager.hook.dllm_generation_end(engine=self, result=out)
        return out

    def config(self, s: Mapping[str, Any]) -> dict[str, Any]:
        """The resolved configuration of a run (JSON-serialisable; see :meth:`from_config`)."""
        return {"model": str(self.model_dir) if self.model_dir else type(self.model).__name__,
                "family": self.model.spec.family, "dtype": str(next(self.model.parameters()).dtype).split(".")[-1],
                "device": str(self.device), "strategy": self.strategy.config(), **dict(s)}

    def _check_length(self, prompts: list[list[int]], gen_length: int) -> None:
        limit = self.model.spec.max_length
        longest = max(len(p) for p in prompts)
        if longest + gen_length > limit:
            fits = limit - gen_length
            raise PromptTooLongError(
                f"prompt of {longest} tokens plus gen_length {gen_length} is {longest + gen_length} tokens, "
                f"more than the model's maximum of {limit}; with gen_length {gen_length} at most "
                f"{max(fits, 0)} prompt tokens fit" + ("" if fits > 0 else " (reduce gen_length)"))

    def _initial_state(self, prompts: list[list[int]], s: Mapping[str, Any]) -> DecodeState:
        spec = self.model.spec
        B, P = len(prompts), max(len(p) for p in prompts)
        T = P + s["gen_length"]
        x = torch.full((B, T), spec.pad_id, dtype=torch.long)
        valid = torch.zeros((B, T), dtype=torch.bool)
        for i, p in enumerate(prompts):  # left padding keeps the generation region aligned
            x[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
            valid[i, P - len(p):] = True
        x[:, P:] = spec.mask_id
        positions = (valid.long().cumsum(1) - 1).clamp_min(0)
        # Always seeded: schedulers may draw random numbers even when decoding greedily (``random``).
        gen = torch.Generator(device=self.device).manual_seed(s["seed"])
        return DecodeState(x=x.to(self.device), valid=valid.to(self.device), positions=positions.to(self.device),
                           gen_start=P, gen_length=s["gen_length"], block_length=s["block_length"],
                           mask_id=spec.mask_id, eos_id=spec.eos_id, shifted_logits=spec.shifted_logits,
                           temperature=s["temperature"], generator=gen, cuda_graphs=self.cuda_graphs)

    def _outputs(self, state: DecodeState) -> tuple[list[str], list[list[int]], int]:
        gen = state.x[:, state.gen_start:].tolist()
        ids = []
        for row in gen:
            cut = next((i for i, t in enumerate(row) if t in self.stop_ids), len(row))
            ids.append(row[:cut])
        texts = [self.tokenizer.decode(r, skip_special_tokens=True) if self.tokenizer is not None else "" for r in ids]
        return texts, ids, sum(len(r) for r in ids)


def _jsonable(extras: Mapping[str, Any]) -> dict[str, Any]:
    """The plain numbers and strings of ``extras`` (components may also keep tensors there)."""
    def keep(v: Any) -> bool:
        return isinstance(v, (int, float, str, bool)) or (
            isinstance(v, Mapping) and all(isinstance(x, (int, float, str, bool)) for x in v.values()))
    return {k: dict(v) if isinstance(v, Mapping) else v for k, v in extras.items() if keep(v)}


class _DecodeLoop:
    """One generation's step loop (kept apart from :class:`Engine` so the engine stays small)."""

    def __init__(self, engine: Engine, state: DecodeState, s: Mapping[str, Any], trace: bool,
                 progress: bool | None) -> None:
        self.engine, self.state, self.s = engine, state, s
        self.model = engine.model
        self.cache: CachePolicy = engine.strategy.cache
        self.scheduler: Scheduler = engine.strategy.scheduler
        self.guide: Guide | None = engine.strategy.guide
        self.trace: list[StepTrace] | None = [] if trace else None
        if progress is None:
            progress = sys.stderr.isatty()
        self.bar = tqdm(total=state.batch_size * state.gen_length, unit="tok", disable=not progress,
                        desc="decoding", leave=False)
        self.eos_fill = self.guide is not None and self.guide.fills_after_eos
        self.nfe = 0
        self.committed = 0

    def run(self) -> dict[str, Any]:
        st, hook = self.state, self.engine.plugin_manager.hook
        self.kv = self.engine.forward.new_kv_cache(st.batch_size, st.length)
        hook.dllm_generation_start(engine=self.engine, state=st, config=self.engine.config(self.s))
        self.cache.prepare(st)
        self.scheduler.prepare(st, self.s["steps"])
        if self.guide is not None:
            self.guide.prepare(st, self.model, self.engine.tokenizer)
        try:
            for block in range(st.num_blocks):
                st.block, st.step_in_block = block, 0
                if not bool(st.masked[:, st.block_start:st.block_end].any()):
                    continue  # filled by an EOS earlier
                self.cache.on_block_start(st)
                self.scheduler.on_block_start(st)
                hook.dllm_block_start(engine=self.engine, state=st)
                while bool(st.masked[:, st.block_start:st.block_end].any()):
                    self._step()
                self.cache.on_block_end(st)
                hook.dllm_block_end(engine=self.engine, state=st)
        finally:
            self.bar.close()
        return {"nfe": self.nfe, "steps": st.step, "trace": self.trace, "committed": self.committed}

    def _step(self) -> None:
        st = self.state
        plan = self.cache.plan(st)
        logit_pos = plan.logit_positions if plan.logit_positions is not None else st.block_positions()
        out = self.engine.forward(st.x, st.positions, st.valid, self.kv, plan, logit_pos)
        self.nfe += 1
        # A committed [MASK] would stay masked forever; upstream never guards this because trained
        # models do not predict it, but random or tiny models can.
        out.logits[..., st.mask_id] = float("-inf")
        in_block = (logit_pos >= st.block_start) & (logit_pos < st.block_end)
        candidates = (st.x.gather(1, logit_pos) == st.mask_id) & in_block
        commit = self.scheduler.select(st, out, candidates)
        if self.guide is not None:
            commit = self.guide.verify(st, commit)
        commit.mask = commit.mask & candidates
        current = st.x.gather(1, commit.positions)
        st.x.scatter_(1, commit.positions, torch.where(commit.mask, commit.tokens, current))
        committed = commit.committed_columns(st.length)
        if self.eos_fill:
            committed |= self._fill_after_eos()
        st.last_commit = committed
        self.cache.observe(st, plan, out, commit)
        n = int(committed.sum())
        self.committed += n
        self.bar.update(n)
        if self.trace is not None:
            rows = out.rows.shape[1]
            self.trace.append(StepTrace(step=st.step, block=st.block, rows_computed=rows, committed=[
                (torch.nonzero(r).flatten() - st.gen_start).tolist() for r in committed]))
        st.step += 1
        st.step_in_block += 1
        if st.step_in_block > 2 * st.block_length + self.s["steps"] + 8:
            raise DllmError(f"decoding stalled in block {st.block}: {st.step_in_block} steps without filling it; "
                            f"scheduler {self.scheduler.name!r} or cache policy {self.cache.name!r} commits nothing")

    def _fill_after_eos(self) -> Any:
        """Columns after the first committed EOS of a row become EOS (upstream early stop)."""
        st = self.state
        cols = torch.arange(st.length, device=st.x.device)
        is_eos = (st.x == st.eos_id) & (cols >= st.gen_start)
        first = torch.where(is_eos.any(1), is_eos.long().argmax(1), torch.full_like(is_eos[:, 0], st.length,
                                                                                      dtype=torch.long))
        fill = st.masked & (cols.unsqueeze(0) > first.unsqueeze(1))
        st.x.masked_fill_(fill, st.eos_id)
        return fill
