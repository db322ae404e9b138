"""LLaDA and Dream implementations: upstream names/shapes, partial forward == full forward, loading."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from dllm_core.errors import ModelFilesError, UnknownComponentError
from dllm_core.models import loading
from dllm_core.models.dream import DreamModel
from dllm_core.models.llada import LLaDAModel
from dllm_core.models.loading import load_model, pick_family, read_config, resolve_model_dir, save_checkpoint
from dllm_core.state import ForwardPlan
from dllm_core.testing.tiny import FAMILIES, make_tiny_model, tiny_config, write_tiny_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
REAL_DIRS = {"llada": "LLaDA-8B-Instruct", "dream": "Dream-7B-Instruct"}
FAMS = ["llada", "dream"]
ATOL = 1e-5


def fixture_config(family: str) -> dict:
    return json.loads((FIXTURES / f"{family}_config.json").read_text())


def sequence_inputs(ids: torch.Tensor, valid: torch.Tensor | None = None):
    """positions (0 at each row's first real token) and valid for (B, T) ids."""
    if valid is None:
        valid = torch.ones_like(ids, dtype=torch.bool)
    return (valid.long().cumsum(1) - 1).clamp(min=0), valid


def random_ids(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 127, (B, T), generator=torch.Generator().manual_seed(seed))


def run(model, ids, plan, logit_positions, cache=None, valid=None):
    positions, valid = sequence_inputs(ids, valid)
    cache = cache if cache is not None else model.new_kv_cache(*ids.shape)
    with torch.no_grad():
        return model(ids, positions, valid, cache, plan, logit_positions), cache


def pick(logits: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, cols.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))


def all_cols(B: int, T: int) -> torch.Tensor:
    return torch.arange(T).expand(B, T)


# -- configs and upstream layout -------------------------------------------------------------------

def test_specs_from_real_configs():
    llada = LLaDAModel.spec_from_config(fixture_config("llada"))
    assert (llada.mask_id, llada.eos_id, llada.pad_id, llada.vocab_size) == (126336, 126081, 126081, 126464)
    assert (llada.num_layers, llada.num_heads, llada.num_kv_heads, llada.head_dim) == (32, 32, 32, 128)
    assert (llada.rope_theta, llada.max_length, llada.shifted_logits) == (500000.0, 4096, False)
    dream = DreamModel.spec_from_config(fixture_config("dream"))
    assert (dream.mask_id, dream.eos_id, dream.pad_id, dream.vocab_size) == (151666, 151643, 151643, 152064)
    assert (dream.num_layers, dream.num_heads, dream.num_kv_heads, dream.head_dim) == (28, 28, 4, 128)
    assert (dream.rope_theta, dream.max_length, dream.shifted_logits) == (1e6, 131072, True)


def test_family_matching():
    assert LLaDAModel.matches_config(fixture_config("llada")) and not LLaDAModel.matches_config(fixture_config("dream"))
    assert DreamModel.matches_config(fixture_config("dream")) and not DreamModel.matches_config(fixture_config("llada"))
    assert pick_family(fixture_config("dream"), FAMILIES) is DreamModel
    with pytest.raises(UnknownComponentError, match="available: dream, llada"):
        pick_family({"model_type": "gpt2"}, FAMILIES)
    with pytest.raises(UnknownComponentError, match="unknown model family 'nope'"):
        pick_family({}, FAMILIES, family="nope")


@pytest.mark.parametrize("family,bad", [("llada", {"alibi": True}), ("llada", {"block_group_size": 2}),
                                        ("dream", {"rope_scaling": {"type": "yarn"}})])
def test_unsupported_config_options_are_refused(family, bad):
    with pytest.raises(ModelFilesError, match=next(iter(bad))):
        FAMILIES[family].from_config(tiny_config(family, **bad))


@pytest.mark.shared
@pytest.mark.parametrize("family", FAMS)
def test_meta_model_matches_upstream_weight_map(family):
    model_dir = SHARED / REAL_DIRS[family]
    if not (model_dir / "model.safetensors.index.json").is_file():
        pytest.skip(f"{model_dir} not available (the real weight maps live in ../shared)")
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    with torch.device("meta"):
        model = FAMILIES[family].from_config(read_config(model_dir)).to(torch.bfloat16)
    state = model.state_dict()
    assert set(state) == set(index["weight_map"])
    # The index has no shapes, but its total byte count pins the sum of all of them (bf16: 2 bytes each).
    assert sum(t.numel() * 2 for t in state.values()) == index["metadata"]["total_size"]
    spec = model.spec
    kv = spec.num_kv_heads * spec.head_dim
    prefix = "model.transformer.blocks.0." if family == "llada" else "model.layers.0.self_attn."
    assert tuple(state[prefix + "k_proj.weight"].shape) == (kv, spec.hidden_size)
    assert tuple(state[prefix + "q_proj.weight"].shape) == (spec.num_heads * spec.head_dim, spec.hidden_size)


# -- partial forward -------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMS)
def test_tiny_model_is_deterministic_and_not_flat(family):
    ids = random_ids(1, 24)
    a = make_tiny_model(family, seed=3).full_logits(ids)
    assert torch.equal(a, make_tiny_model(family, seed=3).full_logits(ids))
    assert not torch.equal(a, make_tiny_model(family, seed=4).full_logits(ids))
    assert a.std() > 1.0 and a.argmax(-1).unique().numel() > 8


@pytest.mark.parametrize("family", FAMS)
def test_refresh_equals_full_logits(family):
    model = make_tiny_model(family)
    ids = random_ids(2, 20)
    out, _ = run(model, ids, ForwardPlan(), all_cols(2, 20))
    torch.testing.assert_close(out.logits, model.full_logits(ids), atol=ATOL, rtol=0)
    assert out.logits.dtype == torch.float32 and torch.equal(out.rows, all_cols(2, 20))
    assert out.attention is None


@pytest.mark.parametrize("family", FAMS)
def test_partial_rows_after_refresh_are_exact(family):
    model = make_tiny_model(family)
    B, T = 2, 24
    ids = random_ids(B, T, seed=1)
    full = model.full_logits(ids)
    _, cache = run(model, ids, ForwardPlan(), all_cols(B, T))
    rows = torch.tensor([[20, 3, 11, 12, 13, 0], [5, 6, 7, 22, 23, 1]])  # unsorted, per-sequence different
    logit_pos = rows + 1 if model.spec.shifted_logits else rows
    logit_pos = logit_pos.clamp(max=T - 1)
    for _ in range(2):  # rewriting unchanged rows leaves the cache as it was
        out, cache = run(model, ids, ForwardPlan(rows=rows, logit_positions=logit_pos), logit_pos, cache)
        torch.testing.assert_close(out.logits, pick(full, logit_pos), atol=ATOL, rtol=0)
        assert torch.equal(out.rows, rows) and torch.equal(out.positions, logit_pos)


@pytest.mark.parametrize("family", FAMS)
def test_partial_rows_see_updated_tokens_through_the_cache(family):
    """Changing tokens and recomputing exactly those rows (plus every row that needs its logit)
    matches a full forward in a one-layer model, where no other row's K/V can go stale."""
    model = make_tiny_model(family, **{"llada": {"n_layers": 1}, "dream": {"num_hidden_layers": 1}}[family])
    B, T = 1, 16
    ids = random_ids(B, T, seed=2)
    _, cache = run(model, ids, ForwardPlan(), all_cols(B, T))
    new = ids.clone()
    new[0, [4, 9]] = torch.tensor([5, 6])
    rows = torch.tensor([[4, 9, 10]])
    out, _ = run(model, new, ForwardPlan(rows=rows), torch.tensor([[10]]), cache)
    torch.testing.assert_close(out.logits, pick(model.full_logits(new), torch.tensor([[10]])), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMS)
def test_kv_limit_masks_keys(family):
    model = make_tiny_model(family)
    B, T, L = 2, 20, 12
    ids = random_ids(B, T, seed=3)
    prefix_full = model.full_logits(ids[:, :L])
    out, cache = run(model, ids, ForwardPlan(kv_limit=L), all_cols(B, T))
    torch.testing.assert_close(out.logits[:, :L], prefix_full, atol=ATOL, rtol=0)
    # Tokens at or beyond the limit cannot influence rows that attend below it.
    other = ids.clone()
    other[:, L:] = (other[:, L:] + 1) % 127
    rows = torch.arange(L).expand(B, L)
    again, _ = run(model, other, ForwardPlan(rows=rows, kv_limit=L), rows, cache)
    torch.testing.assert_close(again.logits, pick(prefix_full, rows), atol=ATOL, rtol=0)
    unlimited, _ = run(model, ids, ForwardPlan(), all_cols(B, T))
    assert not torch.allclose(unlimited.logits[:, :L], prefix_full, atol=1e-3)


@pytest.mark.parametrize("family", FAMS)
def test_left_padded_batch_matches_single_runs(family):
    model = make_tiny_model(family)
    lengths, T = [18, 11, 14], 18
    seqs = [random_ids(1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    ids = torch.full((3, T), 1, dtype=torch.long)
    valid = torch.zeros(3, T, dtype=torch.bool)
    for b, s in enumerate(seqs):
        ids[b, T - len(s):], valid[b, T - len(s):] = s, True
    out, cache = run(model, ids, ForwardPlan(), all_cols(3, T), valid=valid)
    batch_full = model.full_logits(ids, valid)
    # Partial rows over the cache as well: the last 5 columns of every sequence.
    rows = torch.arange(T - 6, T).expand(3, 6)
    lp = rows[:, 1:] if model.spec.shifted_logits else rows[:, :5]
    part, _ = run(model, ids, ForwardPlan(rows=rows), lp, cache, valid=valid)
    for b, s in enumerate(seqs):
        alone = model.full_logits(s.unsqueeze(0))[0]
        start = T - len(s)
        # Shifted models predict a sequence's first column from the (padding) column before it, as upstream does.
        skip = 1 if model.spec.shifted_logits and start > 0 else 0
        torch.testing.assert_close(out.logits[b, start + skip:], alone[skip:], atol=ATOL, rtol=0)
        torch.testing.assert_close(batch_full[b, start + skip:], alone[skip:], atol=ATOL, rtol=0)
        torch.testing.assert_close(part.logits[b], alone[lp[b] - start], atol=ATOL, rtol=0)


def test_dream_logits_are_shifted():
    model = make_tiny_model("dream")
    ids = random_ids(1, 16, seed=4)
    shifted = model.full_logits(ids)
    plain = dataclasses.replace(model.spec, shifted_logits=False)
    unshifted_model = make_tiny_model("dream")
    unshifted_model.spec = plain
    unshifted = unshifted_model.full_logits(ids)
    torch.testing.assert_close(shifted[:, 1:], unshifted[:, :-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(shifted[:, 0], unshifted[:, 0], atol=ATOL, rtol=0)  # column 0 predicts itself
    _, cache = run(model, ids, ForwardPlan(), all_cols(1, 16))
    # Logit of column 9 needs hidden row 8: computing only row 8 is enough ...
    out, cache = run(model, ids, ForwardPlan(rows=torch.tensor([[8]])), torch.tensor([[9]]), cache)
    torch.testing.assert_close(out.logits, shifted[:, 9:10], atol=ATOL, rtol=0)
    # ... and a plan without it is refused (checked on CPU only, where it costs no synchronisation).
    with pytest.raises(ValueError, match="lacks column 8"):
        run(model, ids, ForwardPlan(rows=torch.tensor([[9]])), torch.tensor([[9]]), cache)


@pytest.mark.parametrize("family", FAMS)
def test_attention_probabilities(family):
    model = make_tiny_model(family)
    B, T, L = 2, 16, 13
    ids = random_ids(B, T, seed=5)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :3] = False
    out, cache = run(model, ids, ForwardPlan(need_attention=True, kv_limit=L), all_cols(B, T), valid=valid)
    assert len(out.attention) == model.spec.num_layers
    rows = torch.tensor([[2, 5, 13], [4, 5, 14]])
    lp = rows + 1 if model.spec.shifted_logits else rows
    part, _ = run(model, ids, ForwardPlan(rows=rows, need_attention=True), lp, cache, valid=valid)
    for probs, q in [(out.attention[0], T), (part.attention[-1], 3)]:
        assert probs.shape == (B, q, T) and probs.dtype == torch.float32
        torch.testing.assert_close(probs.sum(-1), torch.ones(B, q), atol=1e-5, rtol=0)
        assert (probs[1, :, :3] == 0).all()
    assert (out.attention[0][:, :, L:] == 0).all()
    assert (part.attention[-1][:, :, L:] > 0).all()  # no kv_limit in the second plan


def test_weight_tying_uses_the_embedding_table():
    model = make_tiny_model("llada", weight_tying=True)
    assert "model.transformer.ff_out.weight" not in model.state_dict()
    assert model.head_weight() is model.model.transformer["wte"].weight
    dream = make_tiny_model("dream", tie_word_embeddings=True)
    assert "lm_head.weight" not in dream.state_dict()


# -- loading and saving ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shards", [1, 3])
def test_save_and_reload_gives_identical_outputs(tmp_path, family, dtype, shards):
    model = make_tiny_model(family, seed=7, dtype=dtype)
    save_checkpoint(model, tmp_path, config=tiny_config(family), num_shards=shards)
    assert (tmp_path / "model.safetensors.index.json").is_file() == (shards > 1)
    loaded = load_model(tmp_path, FAMILIES)
    assert type(loaded) is type(model) and next(loaded.parameters()).dtype == dtype
    assert all(not t.is_meta for t in loaded.state_dict().values())
    ids = random_ids(2, 12, seed=8)
    assert torch.equal(loaded.full_logits(ids), model.full_logits(ids))


def test_max_shard_bytes_and_dtype_override(tmp_path):
    model = make_tiny_model("dream")
    total = sum(t.numel() * 4 for t in model.state_dict().values())
    save_checkpoint(model, tmp_path, config=tiny_config("dream"), max_shard_bytes=total // 3)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == total and len(set(index["weight_map"].values())) >= 3
    half = load_model(tmp_path, FAMILIES, dtype="bf16")
    assert next(half.parameters()).dtype == torch.bfloat16
    assert load_model(tmp_path, FAMILIES, family="dream").spec.family == "dream"


def test_tied_checkpoint_with_a_stored_head_loads(tmp_path):
    model = make_tiny_model("llada", weight_tying=True)
    save_checkpoint(model, tmp_path, config=tiny_config("llada", weight_tying=True))
    from safetensors.torch import load_file, save_file
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.transformer.ff_out.weight"] = tensors["model.transformer.wte.weight"].clone()
    save_file(tensors, tmp_path / "model.safetensors")
    ids = random_ids(1, 8)
    assert torch.equal(load_model(tmp_path, FAMILIES).full_logits(ids), model.full_logits(ids))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ModelFilesError, match="does not exist"):
        load_model(tmp_path / "nowhere", FAMILIES)
    with pytest.raises(ModelFilesError, match="config.json"):
        load_model(tmp_path, FAMILIES)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config("llada")))
    with pytest.raises(ModelFilesError, match="model.safetensors"):
        load_model(tmp_path, FAMILIES)
    write_tiny_checkpoint(tmp_path, "llada", shards=3)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ModelFilesError, match="model-00002-of-00003.safetensors"):
        load_model(tmp_path, FAMILIES)


def test_missing_unexpected_and_misshapen_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file
    write_tiny_checkpoint(tmp_path, "dream")
    path = tmp_path / "model.safetensors"
    good = load_file(path)
    bad = dict(good)
    del bad["model.layers.1.mlp.up_proj.weight"]
    bad["model.layers.1.mlp.extra.weight"] = torch.zeros(2)
    save_file(bad, path)
    with pytest.raises(ModelFilesError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight.*"
                                              r"unexpected tensors: model\.layers\.1\.mlp\.extra\.weight"):
        load_model(tmp_path, FAMILIES)
    bad = dict(good)
    bad["model.norm.weight"] = torch.ones(3)
    save_file(bad, path)
    with pytest.raises(ModelFilesError, match=r"model\.norm\.weight .* shape \(3,\)"):
        load_model(tmp_path, FAMILIES)


def test_resolve_model_dir_falls_back_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def offline(repo_id, **kwargs):
        calls.append(kwargs["local_files_only"])
        raise OSError("hub unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelFilesError, match="'org/model' is neither a local directory nor downloadable"):
        resolve_model_dir("org/model")
    assert calls == [True, False]
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(tmp_path))
    assert resolve_model_dir("org/model") == tmp_path
    assert resolve_model_dir(tmp_path) == tmp_path
    assert loading.parse_dtype(None, {"torch_dtype": "bfloat16"}) is torch.bfloat16
