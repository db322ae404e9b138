"""Tokenizers and chat templates of the real model directories (in ../shared; skipped without it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dllm_core.errors import ModelFilesError, OptionError
from dllm_core.models.chat import render_prompt
from dllm_core.models.loading import load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
DREAM_DIR = SHARED / "Dream-7B-Instruct"
LLADA_DIR = SHARED / "LLaDA-8B-Instruct"

LLADA_EXPECTED = ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHELLO<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n")
DREAM_EXPECTED = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                  "<|im_start|>user\nHELLO<|im_end|>\n<|im_start|>assistant\n")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available (the real tokenizer files live in ../shared)")
    return path


@pytest.fixture(scope="module")
def dream_tokenizer():  # every test using it needs ../shared
    return load_tokenizer(need(DREAM_DIR / "vocab.json").parent)


@pytest.mark.shared
@pytest.mark.parametrize("text", ["Hello world!", "  leading spaces\nand\ttabs\n\n", "12345 + 678 = 7023",
                                  "héllo wörld — 你好，世界 🙂", "def f(x):\n    return x ** 2\n"])
def test_dream_tokenizer_round_trips(dream_tokenizer, text):
    ids = dream_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids and dream_tokenizer.decode(ids) == text


@pytest.mark.shared
def test_dream_special_tokens(dream_tokenizer):
    tok = dream_tokenizer
    assert tok.mask_token == "<|mask|>" and tok.mask_token_id == 151666
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 151643 and tok.pad_token_id == 151643
    assert tok.convert_tokens_to_ids("<|im_start|>") == 151644
    ids = tok("a<|mask|><|mask|>b", add_special_tokens=False)["input_ids"]
    assert ids.count(151666) == 2 and len(ids) == 4
    assert tok("Hi")["input_ids"] == tok("Hi", add_special_tokens=False)["input_ids"]  # no BOS added


@pytest.mark.shared
def test_dream_chat_template(dream_tokenizer):
    template = json.loads((DREAM_DIR / "tokenizer_config.json").read_text())["chat_template"]
    # The pieces of the expected rendering are literally in the template text.
    for piece in ["<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n", "'<|im_start|>' + message.role",
                  "'<|im_start|>assistant\\n'"]:
        assert piece in template
    assert render_prompt(dream_tokenizer, "HELLO", chat=True) == DREAM_EXPECTED
    assert render_prompt(dream_tokenizer, "HELLO", chat=None) == DREAM_EXPECTED
    assert render_prompt(dream_tokenizer, "HELLO", chat=False) == "HELLO"


def llada_stand_in_tokenizer():
    """LLaDA's tokenizer.json is not available here: a word-level stand-in carrying its real
    special tokens and chat template (the template is all the rendering depends on)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    config = json.loads((need(LLADA_DIR / "tokenizer_config.json")).read_text())
    special = json.loads((LLADA_DIR / "special_tokens_map.json").read_text())
    backend = Tokenizer(WordLevel({"[UNK]": 0, special["bos_token"]["content"]: 1}, unk_token="[UNK]"))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=special["bos_token"]["content"],
                                  unk_token="[UNK]")
    tok.chat_template = config["chat_template"]
    return tok


@pytest.mark.shared
def test_llada_chat_template():
    tok = llada_stand_in_tokenizer()
    assert render_prompt(tok, "HELLO", chat=True) == LLADA_EXPECTED
    assert render_prompt(tok, "  HELLO \n", chat=None) == LLADA_EXPECTED  # the template trims the content


@pytest.mark.shared
def test_llada_directory_without_tokenizer_json_is_named():
    with pytest.raises(ModelFilesError, match="tokenizer.json"):
        load_tokenizer(need(LLADA_DIR))


@pytest.mark.shared
def test_chat_true_without_template_is_an_error():
    tok = llada_stand_in_tokenizer()
    tok.chat_template = None
    assert render_prompt(tok, "HELLO", chat=None) == "HELLO"
    with pytest.raises(OptionError, match="no chat template"):
        render_prompt(tok, "HELLO", chat=True)


def test_tokenizer_json_directory_keeps_its_chat_template(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({"<unk>": 0, "<eos>": 1, "hi": 2, "there": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}[assistant]"
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llada"}')  # an unknown model type is fine
    loaded = load_tokenizer(tmp_path)
    assert loaded("hi there")["input_ids"] == [2, 3] and loaded.eos_token_id == 1
    assert render_prompt(loaded, "hi", chat=None) == "[user] hi [assistant]"
