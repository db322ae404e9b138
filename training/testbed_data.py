"""Tokenizer and batches for training the testbed models (see ``train_testbed.py``).

The tokenizer is a byte-level BPE trained on testbed text with digits always split into single
tokens: arithmetic is learnable digit by digit, words of the small task vocabulary become single
tokens, and any other text still encodes (byte fallback), so the shipped model accepts arbitrary
prompts from ``dllm-run``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

#: Special tokens, at fixed ids so that config.json can name them before the tokenizer exists.
EOS_TOKEN, MASK_TOKEN = "<|endoftext|>", "<|mdm_mask|>"
EOS_ID, MASK_ID = 0, 1


def train_tokenizer(texts: Sequence[str], vocab_size: int = 512):  # -> PreTrainedTokenizerFast
    """Train the byte-level BPE on ``texts`` and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits first (one token each), then the GPT-2 style byte-level split of everything else.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN, MASK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    assert tok.token_to_id(EOS_TOKEN) == EOS_ID and tok.token_to_id(MASK_TOKEN) == MASK_ID
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                   mask_token=MASK_TOKEN, model_max_length=256,
                                   clean_up_tokenization_spaces=False)
    return fast


def save_tokenizer(tokenizer, out_dir: str | Path) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json (AutoTokenizer-loadable).

    The two JSON side files are written by hand: transformers 5 would record its own backend
    class name, which transformers 4 cannot load, while ``PreTrainedTokenizerFast`` loads in both.
    """
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    special = {"eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "mask_token": MASK_TOKEN}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 256,
              "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False,
              **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


@dataclass
class Encoded:
    """Token ids of prompts and completions (completion ids exclude EOS)."""

    prompts: list[list[int]]
    answers: list[list[int]]


def encode(tokenizer, prompts: Sequence[str], completions: Sequence[str], gen_length: int) -> Encoded:
    """Tokenise without special tokens, dropping examples whose answer leaves no room for an EOS."""
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    keep = [i for i, a in enumerate(a_ids) if len(a) < gen_length]
    return Encoded([p_ids[i] for i in keep], [a_ids[i] for i in keep])


def diffusion_batch(enc: Encoded, idx: Sequence[int], gen_length: int) -> tuple[Tensor, Tensor, int]:
    """Left-padded prompts followed by the answer padded with EOS to ``gen_length``.

    The layout is the engine's (``Engine._initial_state``): the generation region starts at the
    same column for all rows, padding columns are invalid.  Returns ``(x, valid, gen_start)``.
    """
    import numpy as np

    idx = list(idx)
    P = max(len(enc.prompts[i]) for i in idx)
    x = np.full((len(idx), P + gen_length), EOS_ID, dtype=np.int64)
    valid = np.zeros((len(idx), P + gen_length), dtype=bool)
    for r, i in enumerate(idx):  # numpy slice assignment: fast enough for a few 100k rows
        p, a = enc.prompts[i], enc.answers[i]
        x[r, P - len(p):P] = p
        x[r, P:P + len(a)] = a
        valid[r, P - len(p):] = True
    return torch.from_numpy(x), torch.from_numpy(valid), P


def ar_batch(enc: Encoded, idx: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``prompt + answer + EOS`` for a causal LM: ``(input_ids, attention_mask, labels)``.

    Only answer tokens and the EOS carry a loss: the guide has to judge continuations, not to
    model the prompt distribution.
    """
    seqs = [enc.prompts[i] + enc.answers[i] + [EOS_ID] for i in idx]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), EOS_ID, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    labels = torch.full((len(seqs), L), -100, dtype=torch.long)
    for r, (i, s) in enumerate(zip(idx, seqs)):
        ids[r, :len(s)] = torch.tensor(s)
        att[r, :len(s)] = 1
        start = len(enc.prompts[i])
        labels[r, start:len(s)] = torch.tensor(s[start:])
    return ids, att, labels
