"""Guide ``ar``: Guided Diffusion of FlashDLM (Hu, Meng et al., arXiv 2505.21467).

The diffusion model drafts a token for every masked column it predicts; a small autoregressive
model that shares its vocabulary verifies the drafts left to right, like speculative decoding,
and only the accepted leading run is committed (``assisted_block_diffusion_generate`` and
``ARAssistant`` in ``guided_diffusion/guided_diff_utils.py`` of ZhanqiuHu/flash-dlm-experimental):

* drafts are the scheduler's tokens (``Commit.tokens``) at the contiguous masked columns starting
  at the sequence's first masked column (the run stops at a column without a draft and after
  the first EOS draft);
* the guide keeps a KV cache holding every committed token except the last; in chunks of
  ``chunk`` (32) it is fed ``[last committed token, d_0 .. d_30]`` (then ``[d_31 .. d_62]``, ...),
  and row r of a chunk's logits verifies draft r.  Acceptance of draft d under the guide's
  distribution P: ``deterministic``: d is an argmax of P (a tie counts as agreement);
  ``topk_relative``: d is among the ``top_k`` most likely tokens and P(d) >= ``ratio`` * max P
  (the repo's evaluation setting: top-2, 0.5).  Verification stops at the first rejection and
  the cache is cropped back to the committed prefix;
* the accepted run is committed; when nothing is accepted the diffusion model's first draft is
  committed anyway (never the guide's own token), so every step commits at least one column;
* after a committed EOS the engine fills the rest of the sequence with EOS (``fills_after_eos``).

The guide is any ``transformers`` causal LM (option ``model``: a path or hub id), or a module
passed as ``causal_lm=`` (with an optional ``tokenizer=``) to the constructor.  Its vocabulary
must map to the same ids as the diffusion model's (Qwen2.5 for Dream; the diffusion tokenizer may
have extra tokens such as the mask): ``not_supported_reasons`` compares the two tokenizers token
by token, or, without tokenizers, the vocabulary sizes.

Sequences of a batch are verified one after the other, each with its own guide cache (upstream
runs batch size 1).  When a sequence's first masked column has no draft this step (a cache
policy that predicts a subset of columns, such as ``d2cache``), that sequence keeps the
scheduler's own commit for the step.  Counters per generation are in
``state.extras["ar"]`` (``forward_calls``, ``verified``, ``accepted``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dllm_core import Commit, DecodeState, DiffusionLM, Guide, Options, StrategyContext, check_range

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}


@dataclass(frozen=True)
class ARGuideOptions(Options):
    """``model``: transformers causal LM path or hub id; ``dtype``: ``auto`` (the diffusion model's),
    bf16, fp16 or fp32; ``device``: default the diffusion model's; ``chunk``: drafts verified per
    guide call; ``acceptance``: ``deterministic`` or ``topk_relative`` (with ``top_k``, ``ratio``)."""

    model: str = ""
    dtype: str = "auto"
    device: str = ""
    chunk: int = 32
    acceptance: Literal["deterministic", "topk_relative"] = "topk_relative"
    top_k: int = 2
    ratio: float = 0.5

    def validate(self) -> None:
        from dllm_core import OptionError

        check_range("chunk", self.chunk, 1)
        check_range("top_k", self.top_k, 1)
        check_range("ratio", self.ratio, 0.0, 1.0)
        if self.dtype != "auto" and self.dtype.lower() not in _DTYPES:
            raise OptionError(f"option 'dtype' must be auto, bf16, fp16 or fp32, got {self.dtype!r}")


@dataclass
class _RowCache:
    """One sequence's guide cache and the token ids it holds."""

    past: Any = None
    ids: list[int] = field(default_factory=list)

    def crop(self, keep: int) -> None:
        if len(self.ids) <= keep:
            return
        if keep == 0:
            self.past = None
        else:  # a negative count drops that many from the end (transformers 4.x and 5.x agree)
            self.past.crop(keep - len(self.ids))
        self.ids = self.ids[:keep]


def vocabulary_mismatch(guide_tokenizer: Any, diffusion_tokenizer: Any, guide_size: int,
                        diffusion_size: int) -> str | None:
    """Why the guide's vocabulary cannot verify the diffusion model's ids, or None when it can.

    With both tokenizers every guide token must have the same id in the diffusion tokenizer
    (which may hold extra tokens); otherwise the embedding sizes must be equal.
    """
    if guide_tokenizer is not None and diffusion_tokenizer is not None:
        gv, dv = guide_tokenizer.get_vocab(), diffusion_tokenizer.get_vocab()
        for token, gid in sorted(gv.items(), key=lambda kv: kv[1]):
            did = dv.get(token)
            if did != gid:
                where = "is missing from the diffusion tokenizer" if did is None else \
                    f"has id {did} in the diffusion tokenizer"
                return (f"the guide's vocabulary does not match the diffusion model's: guide token {token!r} "
                        f"(id {gid}) {where} (guide {len(gv)} tokens, diffusion {len(dv)} tokens); "
                        "the guide must share the diffusion model's tokenizer")
        return None
    if guide_size != diffusion_size:
        return (f"the guide's vocabulary size {guide_size} differs from the diffusion model's {diffusion_size} "
                "(no tokenizers to compare token by token); the guide must share the diffusion model's vocabulary")
    return None


class ARGuide(Guide):
    """Verify the diffusion drafts left to right with a causal LM; commit the accepted run."""

    name = "ar"
    description = "Guided Diffusion (FlashDLM): an AR model verifies drafts left to right"
    Options = ARGuideOptions

    def __init__(self, options: ARGuideOptions | None = None, *, causal_lm: nn.Module | None = None,
                 tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.causal_lm = causal_lm
        self.tokenizer = tokenizer
        self._tokenizer_tried = tokenizer is not None or causal_lm is not None
        self._checked: dict[tuple[int, int], list[str]] = {}
        self.forward_calls = 0

    # -- loading and compatibility -------------------------------------------------------------

    def _guide_tokenizer(self) -> Any:
        if not self._tokenizer_tried:
            self._tokenizer_tried = True
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.options.model)
        return self.tokenizer

    def _guide_vocab_size(self) -> int:
        if self.causal_lm is not None:
            emb = getattr(self.causal_lm, "get_input_embeddings", lambda: None)()
            if emb is not None and hasattr(emb, "num_embeddings"):
                return int(emb.num_embeddings)
            return int(self.causal_lm.config.vocab_size)
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(self.options.model).vocab_size)

    def not_supported_reasons(self, ctx: StrategyContext) -> list[str]:
        if self.causal_lm is None and not self.options.model:
            return ["option 'model' is required: a transformers causal LM (path or hub id) sharing the "
                    "diffusion model's vocabulary, e.g. Qwen/Qwen2.5-1.5B-Instruct for Dream"]
        key = (id(ctx.tokenizer), ctx.vocab_size)
        if key not in self._checked:
            try:
                why = vocabulary_mismatch(self._guide_tokenizer(), ctx.tokenizer, self._guide_vocab_size(),
                                          ctx.vocab_size)
                self._checked[key] = [why] if why else []
            except Exception as exc:  # noqa: BLE001 - any loading failure is a reason, reported as such
                return [f"cannot load the guide {self.options.model!r}: {type(exc).__name__}: {exc}"]
        return list(self._checked[key])

    def _load(self, model: DiffusionLM) -> None:
        o = self.options
        ref = next(model.parameters())
        dtype = ref.dtype if o.dtype == "auto" else _DTYPES[o.dtype.lower()]
        device = torch.device(o.device) if o.device else ref.device
        if self.causal_lm is None:
            import transformers
            from transformers import AutoModelForCausalLM

            # transformers renamed ``torch_dtype`` to ``dtype`` in 4.56
            major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
            key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
            self.causal_lm = AutoModelForCausalLM.from_pretrained(o.model, **{key: dtype}).to(device)
        elif o.dtype != "auto":  # a module given to the constructor moves only when asked to
            self.causal_lm.to(device=device, dtype=dtype)
        elif o.device:
            self.causal_lm.to(device)
        self.causal_lm.eval()
        param = next(iter(self.causal_lm.parameters()), None)
        self._device = param.device if param is not None else device

    def prepare(self, state: DecodeState, model: DiffusionLM, tokenizer: Any) -> None:
        self._load(model)
        self._rows = [_RowCache() for _ in range(state.batch_size)]
        self.forward_calls = 0
        self._stats = state.extras.setdefault(self.name, {"forward_calls": 0, "verified": 0, "accepted": 0})

    # -- verification --------------------------------------------------------------------------

    def _accept(self, logits: Tensor, drafts: list[int]) -> list[bool]:
        """Per draft, whether the guide's distribution (one logits row each) accepts it."""
        lg = logits.float()
        d = torch.tensor(drafts, device=lg.device)
        inside = d < lg.shape[-1]  # ids the guide cannot produce are rejected
        dl = lg.gather(1, d.clamp(max=lg.shape[-1] - 1).unsqueeze(1)).squeeze(1)
        best = lg.max(-1).values
        if self.options.acceptance == "deterministic":
            ok = dl >= best
        else:
            kth = torch.topk(lg, min(self.options.top_k, lg.shape[-1]), dim=-1).values[:, -1]
            # P(d) >= ratio * max P  <=>  logit(d) - max logit >= log(ratio)
            floor = math.log(self.options.ratio) if self.options.ratio > 0 else float("-inf")
            ok = (dl >= kth) & (dl - best >= floor)
        return (ok & inside).tolist()

    def _forward(self, rc: _RowCache, feed: list[int]) -> Tensor:
        ids = torch.tensor([feed], dtype=torch.long, device=self._device)
        out = self.causal_lm(input_ids=ids, past_key_values=rc.past, use_cache=True)
        if out.past_key_values is None:
            raise RuntimeError("the guide model returned no past_key_values; it must support use_cache=True")
        rc.past = out.past_key_values
        rc.ids = rc.ids + feed
        self.forward_calls += 1
        self._stats["forward_calls"] += 1
        return out.logits[0]

    def verify_row(self, rc: _RowCache, prefix: list[int], drafts: list[int]) -> int:
        """Number of leading ``drafts`` the guide accepts after the committed ``prefix`` (>= 1 token).

        Leaves ``rc`` holding the committed prefix plus the committed drafts, except the last token.
        """
        target, last = prefix[:-1], prefix[-1]
        common = 0
        for a, b in zip(rc.ids, target):  # the cache may lag behind (EOS fill, a fallback step)
            if a != b:
                break
            common += 1
        rc.crop(common)
        catch_up = target[common:]
        chunk, accepted, i = self.options.chunk, 0, 0
        while i < len(drafts):
            n = min(chunk, len(drafts) - i)
            feed = catch_up + [last] + drafts[:n - 1] if i == 0 else drafts[i - 1:i + n - 1]
            logits = self._forward(rc, feed)[-n:]
            ok = self._accept(logits, drafts[i:i + n])
            run = ok.index(False) if False in ok else n
            accepted += run
            self._stats["verified"] += min(run + 1, n)
            if run < n:
                break
            i += n
        self._stats["accepted"] += accepted
        committed = max(accepted, 1)
        rc.crop(len(prefix) - 1 + committed)
        return committed

    def verify(self, state: DecodeState, commit: Commit) -> Commit:
        B, T = state.x.shape
        dev = state.x.device
        masked = state.masked.clone()
        masked[:, :state.gen_start] = False
        first = torch.where(masked.any(1), masked.long().argmax(1), torch.full((B,), T, dtype=torch.long, device=dev))
        # (B, T) draft per column (-1: none); non-candidate slots land in a spare column T
        slot = torch.where(commit.candidates, commit.positions, torch.full_like(commit.positions, T))
        drafts_map = torch.full((B, T + 1), -1, dtype=torch.long, device=dev)
        drafts_map.scatter_(1, slot, torch.where(commit.candidates, commit.tokens, torch.full_like(commit.tokens, -1)))
        drafts_rows, firsts = drafts_map[:, :T].tolist(), first.tolist()
        counts, fallback = [0] * B, [False] * B
        for b in range(B):  # sequential per sequence: each has its own guide cache
            f = firsts[b]
            if f >= T:
                continue
            run = drafts_rows[b][f:]
            if run[0] < 0:
                fallback[b] = bool(commit.candidates[b].any())
                continue
            n = run.index(-1) if -1 in run else len(run)
            drafts = run[:n]
            if state.eos_id in drafts:  # nothing after an EOS matters: the engine fills it with EOS
                drafts = drafts[:drafts.index(state.eos_id) + 1]
            prefix = state.x[b, :f][state.valid[b, :f]].tolist()
            counts[b] = self.verify_row(self._rows[b], prefix, drafts)
        start = first.unsqueeze(1)
        end = start + torch.tensor(counts, dtype=torch.long, device=dev).unsqueeze(1)
        mask = (commit.positions >= start) & (commit.positions < end) & commit.candidates
        keep = torch.tensor(fallback, dtype=torch.bool, device=dev).unsqueeze(1)
        return dataclasses.replace(commit, mask=torch.where(keep, commit.mask, mask))
