"""Schedule arithmetic of the baseline schedulers, pinned against the upstream definitions.

LLaDA ``get_num_transfer_tokens``: m masks over s steps -> m // s per step, the first m % s steps
one more.  Dream ``_sample``: timesteps linspace(1, eps, s + 1), at step i < s - 1 commit
int(m * (1 - t_{i+1} / t_i)) of the m masks still there, all remaining at the last step.
"""

from __future__ import annotations

import torch

from dllm_core import DecodeState, ForwardOutput
from dllm_core.sampling import choose_tokens, select_top
from dllm_plugins.dream_schedule import Entropy, MaskGitPlus, TopKMargin, dream_transfer_count
from dllm_plugins.linear_schedule import LowConfidence, RandomOrder, linear_transfer_counts


def upstream_llada_counts(m: int, s: int) -> list[int]:
    return [m // s + (1 if i < m % s else 0) for i in range(s)]


def upstream_dream_counts(m0: int, s: int, eps: float = 1e-3) -> list[int]:
    ts = torch.linspace(1, eps, s + 1, dtype=torch.float64)
    left, out = m0, []
    for i in range(s):
        n = int(left * (1 - ts[i + 1] / ts[i])) if i < s - 1 else left
        out.append(n)
        left -= n
    return out


def test_llada_linear_counts_match_upstream():
    for m in (0, 1, 7, 32, 33):
        for s in (1, 4, 5, 32):
            got = linear_transfer_counts(torch.tensor([m]), s)[0].tolist()
            assert got == upstream_llada_counts(m, s)
            assert sum(got) == m


def test_dream_counts_match_upstream():
    for m0 in (8, 32, 100):
        for s in (1, 4, 10, 32):
            left, got = m0, []
            for i in range(s):
                n = int(dream_transfer_count(torch.tensor([left]), i, s, 1e-3)[0])
                got.append(n)
                left -= n
            assert got == upstream_dream_counts(m0, s), (m0, s)
            assert left == 0


def _state(B=2, gen=8, block=8, P=2, masked_cols=None):
    x = torch.full((B, P + gen), 99)
    x[:, P:] = 127
    if masked_cols is not None:
        x[:, P:] = 5
        for c in masked_cols:
            x[:, P + c] = 127
    return DecodeState(x=x, valid=torch.ones_like(x, dtype=torch.bool), positions=torch.arange(P + gen).expand(B, -1),
                       gen_start=P, gen_length=gen, block_length=block, mask_id=127, eos_id=1, shifted_logits=False)


def _out(logits, state):
    pos = state.block_positions()
    return ForwardOutput(logits=logits, positions=pos, rows=pos)


def test_low_confidence_commits_fixed_count_most_confident():
    st = _state(gen=8, block=4)
    sch = LowConfidence()
    sch.prepare(st, steps=4)  # 2 blocks -> 2 steps per block -> 2 tokens per step
    sch.on_block_start(st)
    logits = torch.zeros(2, 4, 10)
    # row 0: confidence rises with column; row 1: falls
    for c in range(4):
        logits[0, c, 3] = c + 1.0
        logits[1, c, 4] = 4.0 - c
    cand = torch.ones(2, 4, dtype=torch.bool)
    commit = sch.select(st, _out(logits, st), cand)
    assert commit.mask[0].tolist() == [False, False, True, True]
    assert commit.mask[1].tolist() == [True, True, False, False]
    assert commit.tokens[0].tolist() == [3, 3, 3, 3] and commit.tokens[1].tolist() == [4] * 4


def test_low_confidence_only_candidates_and_ties_lower_column():
    st = _state(gen=4, block=4)
    sch = LowConfidence()
    sch.prepare(st, steps=4)
    sch.on_block_start(st)
    logits = torch.zeros(2, 4, 10)
    cand = torch.tensor([[False, True, True, True], [True, False, False, False]])
    commit = sch.select(st, _out(logits, st), cand)  # all confidences tie
    assert commit.mask[0].tolist() == [False, True, False, False]
    assert commit.mask[1].tolist() == [True, False, False, False]


def test_random_order_is_seeded_and_counts():
    st = _state(gen=8, block=8)
    st.generator = torch.Generator().manual_seed(3)
    sch = RandomOrder()
    sch.prepare(st, steps=2)
    sch.on_block_start(st)
    commit = sch.select(st, _out(torch.zeros(2, 8, 10), st), torch.ones(2, 8, dtype=torch.bool))
    assert commit.mask.sum(1).tolist() == [4, 4]


def test_dream_confidences():
    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0]]])
    p = torch.softmax(logits, -1)
    tok, conf = choose_tokens(logits, confidence="max_prob")
    assert tok.item() == 0 and torch.allclose(conf, p.max(-1).values)
    _, margin = choose_tokens(logits, confidence="margin")
    assert torch.allclose(margin, p[..., 0] - p[..., 1])
    _, ne = choose_tokens(logits, confidence="neg_entropy")
    assert torch.allclose(ne, (p * p.log()).sum(-1))


def test_dream_schedulers_commit_counts_and_ranking():
    st = _state(gen=8, block=8)
    for cls in (MaskGitPlus, TopKMargin, Entropy):
        sch = cls()
        sch.prepare(st, steps=2)
        sch.on_block_start(st)
        logits = torch.zeros(2, 8, 10)
        logits[:, 5, 2] = 9.0  # column 5 is by far the most certain under every confidence
        commit = sch.select(st, _out(logits, st), torch.ones(2, 8, dtype=torch.bool))
        n = int(8 * (1 - (1 - (1 - 1e-3) / 2) / 1.0))
        assert commit.mask.sum(1).tolist() == [n, n]
        assert commit.mask[:, 5].all()


def test_select_top_batches():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3]])
    cand = torch.tensor([[True, True, True], [True, True, True]])
    got = select_top(scores, torch.tensor([2, 1]), cand)
    assert got.tolist() == [[False, True, True], [True, False, False]]
