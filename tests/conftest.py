"""Shared fixtures: tiny checkpoints with a word-level tokenizer, and the ../shared location."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def write_word_tokenizer(model_dir: Path, vocab: int = 128, mask_id: int = 127, eos_id: int = 1) -> None:
    """A word-level tokenizer whose token i is ``w{i}`` (specials: eos, mask), saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab)}
    words.pop(f"w{mask_id}")
    words.pop(f"w{eos_id}")
    words["<|mask|>"], words["<|eos|>"] = mask_id, eos_id
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>", pad_token="<|eos|>",
                                   mask_token="<|mask|>", unk_token="w0")
    fast.save_pretrained(model_dir)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny random LLaDA and Dream checkpoints (upstream layout) with a word-level tokenizer."""
    from dllm_core.testing.tiny import write_tiny_checkpoint

    out = {}
    for family in ("llada", "dream"):
        d = tmp_path_factory.mktemp(f"tiny-{family}")
        write_tiny_checkpoint(d, family)
        write_word_tokenizer(d)
        out[family] = d
    return out


def pytest_configure(config):
    # Tiny models run fastest on one thread; more threads only contend on a 2-core CI machine.
    import torch

    torch.set_num_threads(1)
