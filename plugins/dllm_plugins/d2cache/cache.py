"""Cache policy ``d2cache``: d2Cache's dual adaptive row selection (arXiv 2509.23094).

Step 0 is a full refresh that also returns attention probabilities.  Every later step
recomputes only the union of three row sets; all other columns reuse their cached K/V:

* **S1** (stage 1): the ``k`` masked columns with the highest certainty prior, confidence x
  Gaussian density of known columns (``dllm_core.ops.certainty_density_topk``), searched from
  the current block's start to the first block boundary holding ``k`` masks, masks of the
  current block first.  Their predictions are the step's logits.  Shifted-logit models (Dream)
  recompute the row before each S1 column instead (for the first generated column that is the
  last prompt column).
* **S2**: the columns committed by the previous step (their K/V changed from [MASK] to a token).
* **S3**: the rollout nucleus: of the remaining valid columns, those with the largest attention
  rollout influence of the previous forward, up to mass ``p`` (see :mod:`.rollout`, :mod:`.nucleus`).

In a batch every sequence must recompute the same number of rows, so short sets are topped up:
left-padding columns first (free: nothing attends to them), then as upstream masked columns by
certainty prior, then other columns by rollout influence.  Top-up rows beyond the padding are
real recomputations, so a sequence's output can depend on the rest of its batch (as upstream).

``stage1_confidence`` picks which confidence ranks S1: ``"current"`` (default, the paper's intent)
keeps, for each masked column, the latest confidence computed for it (all columns at step 0,
the S1 columns afterwards); ``"step0"`` keeps the step-0 confidence forever, which is what the
reference code does (its update writes into a temporary copy; algorithms.md §2.3 item 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dllm_core import (CachePolicy, Commit, DecodeState, DllmError, ForwardOutput, ForwardPlan, GraphedFunction,
                       OptionError, Options, check_range)
from dllm_core.cuda_graphs import bucket_size, pad_columns
from dllm_core.ops import certainty_density_topk
from dllm_core.sampling import sample_plain_confidence

from .nucleus import inflate_gaps, lexicographic_order, nucleus_select, rows_from_mask_padded
from .rollout import rollout_influence, rollout_influence_padded

#: Last-resort filler of unused logit slots: column 0 is a prompt (or left-padding) column, never
#: a candidate, and for both model kinds its prediction comes from hidden row 0.
ANCHOR = 0


@dataclass(frozen=True)
class D2CacheOptions(Options):
    """``k``: stage-1 size; ``p``: rollout nucleus mass; ``sigma``: density width (columns);
    ``stage1_confidence``: ``"current"`` or ``"step0"``; ``inflate_w``: fill gaps of at most this
    many columns between selected rows (0 = off; upstream uses 4 with semi-AR parallel decoding)."""

    k: int = 32
    p: float = 0.1
    sigma: float = 10.0
    stage1_confidence: Literal["current", "step0"] = "current"
    inflate_w: int = 0

    def validate(self) -> None:
        check_range("k", self.k, 1)
        check_range("p", self.p, 0.0, 1.0, low_open=True)
        check_range("sigma", self.sigma, 0.0, low_open=True)
        check_range("inflate_w", self.inflate_w, 0)
        if self.stage1_confidence not in ("current", "step0"):
            raise OptionError("option 'stage1_confidence' must be 'current' or 'step0', "
                              f"got {self.stage1_confidence!r}")


@dataclass
class RowSelection:
    """The row sets of one step (every mask is (B, T) bool over columns)."""

    stage1: Tensor        #: (B, k') columns whose predictions are wanted, ascending; unused slots
                          #: repeat a non-candidate column whose hidden row is recomputed anyway
    stage1_valid: Tensor  #: (B, k') bool, False on the padding slots
    stage1_rows: Tensor   #: hidden rows of stage 1 (Dream: the columns before the stage-1 columns)
    stage2: Tensor        #: columns committed by the previous step
    stage3: Tensor        #: rollout nucleus
    rows: Tensor          #: the union, after inflation, plus ANCHOR where a logit slot needs it
    tier: Tensor          #: (B, T) long top-up priority: 3 left padding, 2 masked, 1 other
    score: Tensor         #: (B, T) float top-up score within a tier (certainty prior or influence)
    count: Tensor         #: () long, the step's row count q: the largest ``rows`` set of the batch


def block_bounds(state: DecodeState) -> Tensor:
    """(2,) long ``[block_start, block_end]`` on the state's device, written by two fills (no
    host-to-device copy, which would synchronise): the selection takes the block as a tensor so
    that one CUDA graph serves every block."""
    bounds = torch.full((2,), state.block_start, dtype=torch.long, device=state.x.device)
    bounds[1] = state.block_end
    return bounds


def select_rows(state: DecodeState, confidence: Tensor, influence: Tensor, *, k: int, p: float, sigma: float,
                inflate_w: int = 0) -> RowSelection:
    """d2Cache's row sets for the coming step (pure function of its inputs; no host sync).

    :param confidence: (B, gen_length) float32 confidence of each generated column.
    :param influence: (B, T) rollout influence of each column from the previous forward.
    """
    return select_rows_tensors(state.x, state.valid, state.last_commit, confidence, influence, block_bounds(state),
                               state.gen_start, state.block_length, state.mask_id, state.shifted_logits, k, p, sigma,
                               inflate_w)


def select_rows_tensors(x: Tensor, valid: Tensor, last_commit: Tensor | None, confidence: Tensor, influence: Tensor,
                        bounds: Tensor, gen_start: int, block_length: int, mask_id: int, shifted: bool, k: int,
                        p: float, sigma: float, inflate_w: int) -> RowSelection:
    """:func:`select_rows` on the state's tensors (``bounds``: :func:`block_bounds`); a pure
    function of fixed output shapes, so one CUDA graph per (B, T) replays it."""
    B, T = x.shape
    gs, G, bl = gen_start, confidence.shape[1], block_length
    dev = x.device
    cols, tcols = torch.arange(G, device=dev), torch.arange(T, device=dev)
    state_masked = x == mask_id
    masked = state_masked[:, gs:gs + G]
    bs, be = bounds[0] - gs, bounds[1] - gs
    from_block = masked & (cols >= bs)
    # Search region: from the block start to the first block boundary with >= k masks (upstream);
    # with a single block this is every masked column.
    cum = from_block.cumsum(1)
    meets = cum >= k
    first = torch.where(meets.any(1), meets.int().argmax(1), torch.full_like(cum[:, 0], G - 1))
    end = (((first // bl) + 1) * bl).clamp(max=G)
    cand = from_block & (cols < end.unsqueeze(1))
    scores, top = certainty_density_topk(~masked, confidence, cand, sigma, k)
    if bl < G:
        # masks of the current block first, so a step always has candidates (upstream adds the
        # maximum score to in-block scores for the same purpose)
        tier = cand.long() + (cand & (cols < be)).long()
        top = lexicographic_order(tier, scores)[:, :top.shape[1]]
    ok = cand.gather(1, top)
    # ascending columns, padding slots last, so that schedulers break ties by the lower column
    # exactly as over a block's positions
    key = torch.sort(torch.where(ok, top, top + G), dim=1).values
    ok = key < G
    stage1 = key + gs
    hidden = stage1 - 1 if shifted else stage1
    spare = torch.full_like(hidden, T)  # padding slots scatter into a spare column, dropped below
    stage1_rows = torch.zeros(B, T + 1, dtype=torch.bool, device=dev).scatter_(
        1, torch.where(ok, hidden, spare), True)[:, :T]
    stage2 = last_commit if last_commit is not None else torch.zeros_like(stage1_rows)
    stage3 = nucleus_select(influence, p, valid & ~stage1_rows & ~stage2)
    rows = inflate_gaps(stage1_rows | stage2 | stage3, inflate_w)
    candidate = state_masked & (tcols >= bounds[0]) & (tcols < bounds[1])
    stage1 = torch.where(ok, stage1, _padding_position(candidate, rows, ~ok.all(1), shifted).unsqueeze(1))
    full_mask = state_masked & (tcols >= gs)
    # Top-up order: left-padding columns first (recomputing them changes nothing: no real row
    # attends to them), then upstream's order: masked columns by certainty prior, then the rest
    # by rollout influence.
    tier = torch.where(~valid, 3, torch.where(full_mask, 2, 1))
    density = torch.full((B, T), float("-inf"), device=dev)
    density[:, gs:gs + G] = scores
    score = torch.where(full_mask, density, influence.to(torch.float32))
    return RowSelection(stage1=stage1, stage1_valid=ok, stage1_rows=stage1_rows, stage2=stage2, stage3=stage3,
                        rows=rows, tier=tier, score=score, count=rows.sum(1).max())


def _padding_position(candidate: Tensor, rows: Tensor, needed: Tensor, shifted: bool) -> Tensor:
    """(B,) a column to fill unused logit slots with: not a ``candidate`` (masked, in the block),
    and predicted by a row already in ``rows`` (so padding costs no extra row).  Where no such
    column exists and ``needed``, ANCHOR is added to ``rows`` (in place) and returned."""
    # feeds[:, c]: the hidden row predicting column c is recomputed (Dream: row c - 1; column 0
    # predicts itself, as the model's shift does)
    feeds = torch.cat([rows[:, :1], rows[:, :-1]], dim=1) if shifted else rows
    free = feeds & ~candidate
    lacking = needed & ~free.any(1)
    # ANCHOR is left padding in a padded sequence (recomputing it changes nothing); otherwise
    # the first prompt column is recomputed once more than upstream would
    rows[:, ANCHOR] |= lacking
    free[:, ANCHOR] |= lacking
    return free.int().argmax(1)


def max_probability(logits: Tensor) -> Tensor:
    """(..., ) float32 probability of the most likely token (the ``maskgit_plus`` confidence)."""
    return sample_plain_confidence(logits)[1]


def update_confidence(confidence: Tensor, positions: Tensor, logits: Tensor, gen_start: int) -> Tensor:
    """(B, G) ``confidence`` with the max probability of ``logits`` (B, r, V) written at the
    generated columns among ``positions`` (B, r); other positions are ignored."""
    B, G = confidence.shape
    rel = positions - gen_start
    inside = (rel >= 0) & (rel < G)
    idx = torch.where(inside, rel, torch.full_like(rel, G))  # outside -> a spare column, dropped
    buf = torch.cat([confidence, confidence.new_zeros(B, 1)], dim=1)
    buf.scatter_(1, idx, max_probability(logits))
    return buf[:, :G]


class D2Cache(CachePolicy):
    """d2Cache: recompute top-k certainty-prior masks, last commits and a rollout nucleus.

    Per step: :func:`select_rows_tensors` (fixed shapes), one host sync for the row count q,
    :func:`rows_from_mask_padded` for q's bucket, then after the forward the rollout of that
    bucket and the confidence update.  With ``DecodeState.cuda_graphs`` each of the four is
    replayed from CUDA graphs (:class:`dllm_core.GraphedFunction`, kept across generations);
    otherwise they run eagerly on the same padded shapes, so both give the same rows.
    """

    description = "d2Cache: certainty-prior top-k + last commits + attention-rollout nucleus rows"
    Options = D2CacheOptions
    uses_attention = True

    def prepare(self, state: DecodeState) -> None:
        self._confidence: Tensor | None = None  # (B, G) stage-1 confidence
        self._influence: Tensor | None = None   # (B, T) rollout influence of the last forward
        #: kept for inspection and tests; with CUDA graphs it holds static buffers that the next
        #: step overwrites
        self.last_selection: RowSelection | None = None
        self._bounds: tuple[tuple[int, int], Tensor] | None = None
        self._planned: tuple[Tensor, Tensor] | None = None  # (the plan's rows, the same padded to the bucket)
        if not hasattr(self, "_select"):  # the graphs live as long as the policy (across generations)
            self._select = GraphedFunction(select_rows_tensors, name="d2cache.select_rows")
            self._rows = GraphedFunction(rows_from_mask_padded, name="d2cache.rows_from_mask")
            self._rollout = GraphedFunction(rollout_influence_padded, name="d2cache.rollout")
            self._update = GraphedFunction(update_confidence, name="d2cache.update_confidence")
        for fn in (self._select, self._rows, self._rollout, self._update):
            fn.enabled = state.cuda_graphs

    def plan(self, state: DecodeState) -> ForwardPlan:
        if self._influence is None or self._confidence is None:
            # step 0: full refresh; predictions for the whole generated region seed stage 1
            cols = torch.arange(state.gen_start, state.gen_start + state.gen_length, device=state.x.device)
            return ForwardPlan(rows=None, logit_positions=cols.expand(state.batch_size, -1), need_attention=True)
        o = self.options
        sel = self._select(state.x, state.valid, state.last_commit, self._confidence, self._influence,
                           self._block_bounds(state), state.gen_start, state.block_length, state.mask_id,
                           state.shifted_logits, o.k, o.p, o.sigma, o.inflate_w)
        # The one host sync of the step: the model needs the row count as a shape.
        q = int(sel.count)
        padded = self._rows(sel.rows, sel.tier, sel.score, sel.count, bucket_size(q, state.length))
        self.last_selection = sel
        self._planned = (padded[:, :q], padded)
        return ForwardPlan(rows=self._planned[0], logit_positions=sel.stage1, need_attention=True)

    def observe(self, state: DecodeState, plan: ForwardPlan, out: ForwardOutput, commit: Commit) -> None:
        if out.attention is None:
            raise DllmError("cache 'd2cache' needs attention probabilities, but the model returned none "
                            "for a plan with need_attention=True")
        if self._confidence is None:  # step 0 (once per generation): eagerly, no graph for its shapes
            zeros = torch.zeros(state.batch_size, state.gen_length, dtype=torch.float32, device=state.x.device)
            self._confidence = update_confidence(zeros, out.positions, out.logits, state.gen_start)
        elif self.options.stage1_confidence == "current":
            self._confidence = self._update(self._confidence, out.positions, out.logits, state.gen_start)
        if plan.rows is None:  # a refresh: every row, layer by layer (stacking T x T rows costs memory)
            self._influence = rollout_influence(out.attention, out.rows, state.valid.to(torch.float32))
        else:  # padded to the row bucket, as the plan's rows were
            q = out.rows.shape[1]
            qb = bucket_size(q, state.length)
            attention = F.pad(torch.stack(out.attention, dim=1), (0, 0, 0, qb - q))
            planned = self._planned
            rows = planned[1] if planned is not None and out.rows is planned[0] else pad_columns(out.rows, qb)
            self._influence = self._rollout(attention, rows, state.valid)

    def _block_bounds(self, state: DecodeState) -> Tensor:
        """:func:`block_bounds`, made once per block."""
        key = (state.block_start, state.block_end)
        if self._bounds is None or self._bounds[0] != key:
            self._bounds = (key, block_bounds(state))
        return self._bounds[1]
