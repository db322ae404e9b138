"""Loading and saving Hugging Face style model directories (config.json + safetensors, sharded or not).

The model is built on the meta device and the checkpoint tensors are assigned into it shard by
shard, so an 8B model never exists twice in memory.  Every problem with the files raises
:class:`~dllm_core.errors.ModelFilesError` naming the file or tensors concerned.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ModelFilesError, OptionError, UnknownComponentError
from .base import DiffusionLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: What a hub download fetches: weights in safetensors, configs and tokenizer files (no .bin/.pt).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def resolve_model_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """A local model directory, or a Hugging Face hub id downloaded (or found in the hub cache)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    looks_like_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and not path.exists()
    if not looks_like_id:
        raise ModelFilesError(f"model directory {path} does not exist")
    import huggingface_hub  # looked up at call time so tests can stand in for the hub

    errors = []
    for local_only in (True, False):  # the cache first: no network round trip when already downloaded
        try:
            return Path(huggingface_hub.snapshot_download(name, allow_patterns=HUB_PATTERNS,
                                                          local_files_only=local_only))
        except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear error
            errors.append(f"{type(e).__name__}: {e}")
    raise ModelFilesError(f"{name!r} is neither a local directory nor downloadable from the Hugging Face hub "
                          f"({errors[-1]})")


def read_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``config.json`` of a model directory."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelFilesError(f"{path} is missing (a model directory needs config.json)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelFilesError(f"{path} is not readable JSON: {e}") from e


def parse_dtype(dtype: torch.dtype | str | None, config: Mapping[str, Any] | None = None) -> torch.dtype:
    """A torch dtype from a dtype, a name (bf16/fp16/fp32 or the long names), or the config's default."""
    if dtype is None:
        dtype = (config or {}).get("torch_dtype") or (config or {}).get("dtype") or "float32"
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.bfloat16, torch.float16, torch.float32):
            return dtype
        raise OptionError(f"dtype must be bfloat16, float16 or float32, got {dtype}")
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise OptionError(f"dtype must be one of bf16, fp16, fp32, got {dtype!r}") from None


def pick_family(config: Mapping[str, Any], families: Mapping[str, type[DiffusionLM]],
                family: str | None = None, where: str = "config.json") -> type[DiffusionLM]:
    """The family named, or the first whose ``matches_config`` accepts the config."""
    names = ", ".join(sorted(families)) or "(none installed)"
    if family is not None:
        if family not in families:
            raise UnknownComponentError(f"unknown model family {family!r}; available: {names}")
        return families[family]
    for cls in families.values():
        if cls.matches_config(dict(config)):
            return cls
    raise UnknownComponentError(
        f"{where} (model_type={config.get('model_type')!r}, architectures={config.get('architectures')}) "
        f"matches no installed model family; available: {names} (pass family= to force one)")


def checkpoint_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it, checking that every file exists."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise ModelFilesError(f"{index} is not a valid safetensors index: {e}") from e
        files = {f: model_dir / f for f in set(weight_map.values())}
        missing = sorted(str(p) for p in files.values() if not p.is_file())
        if missing:
            raise ModelFilesError(f"missing checkpoint shard(s) listed in {index}: {', '.join(missing)}")
        return {name: files[f] for name, f in weight_map.items()}
    single = model_dir / SINGLE_FILE
    if single.is_file():
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}
    extra = " (only PyTorch .bin weights found; convert them to safetensors)" if any(model_dir.glob("*.bin")) else ""
    raise ModelFilesError(f"{model_dir} has no weights: neither {single} nor {index} exists{extra}")


def _few(names: set[str], n: int = 5) -> str:
    shown = sorted(names)[:n]
    return ", ".join(shown) + (f" and {len(names) - n} more" if len(names) > n else "")


def load_model(name_or_path: str | os.PathLike[str], families: Mapping[str, type[DiffusionLM]], *,
               dtype: torch.dtype | str | None = None, device: torch.device | str = "cpu",
               family: str | None = None) -> DiffusionLM:
    """Build the family's model from ``config.json`` and load its safetensors weights.

    ``dtype`` defaults to the config's ``torch_dtype``; the model is returned in eval mode on ``device``.
    """
    model_dir = resolve_model_dir(name_or_path)
    config = read_config(model_dir)
    cls = pick_family(config, families, family, where=str(model_dir / "config.json"))
    dtype = parse_dtype(dtype, config)
    device = torch.device(device)
    with torch.device("meta"):
        model = cls.from_config(config).to(dtype)
    expected = dict(model.state_dict())
    files = checkpoint_files(model_dir)
    ignored = set(getattr(model, "ignored_checkpoint_keys", ()))
    missing = set(expected) - set(files)
    unexpected = set(files) - set(expected) - ignored
    if missing or unexpected:
        parts = ([f"missing tensors: {_few(missing)}"] if missing else []) + (
            [f"unexpected tensors: {_few(unexpected)}"] if unexpected else [])
        raise ModelFilesError(f"checkpoint in {model_dir} does not match the {cls.family} model built from its "
                              f"config.json; " + "; ".join(parts))

    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(files[name], []).append(name)
    for path, names in by_file.items():
        shard: dict[str, torch.Tensor] = {}
        with safe_open(path, framework="pt") as f:
            for name in names:
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(expected[name].shape):
                    raise ModelFilesError(f"tensor {name} in {path} has shape {shape}, the config implies "
                                          f"{tuple(expected[name].shape)}")
                shard[name] = f.get_tensor(name).to(device=device, dtype=dtype)
        model.load_state_dict(shard, strict=False, assign=True)
        del shard
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelFilesError(f"{cls.family} model has tensors no checkpoint provides: {_few(set(left))}")
    fuse = getattr(model, "fuse_projections", None)
    if callable(fuse):  # one [q; k; v] and one [gate; up] matrix per layer; module weights become views
        fuse()
    return model.eval()


def save_checkpoint(model: DiffusionLM, model_dir: str | os.PathLike[str], *, config: Mapping[str, Any],
                    max_shard_bytes: int | None = None, num_shards: int | None = None) -> Path:
    """Write ``config.json`` and the weights in the upstream layout; returns the directory.

    One ``model.safetensors`` by default; sharded ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json`` when the weights exceed ``max_shard_bytes`` or when
    ``num_shards`` > 1 (split into that many groups of consecutive tensors).  Weight files already in
    the directory are removed first, so the directory never mixes two checkpoints.
    """
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {n: _own_storage(t.detach().to("cpu").contiguous()) for n, t in model.state_dict().items()}
    dtype = next(iter(tensors.values())).dtype
    cfg = dict(config)
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for old in [*out.glob("model*.safetensors"), out / INDEX_FILE]:
        old.unlink(missing_ok=True)

    names = list(tensors)
    size = {n: tensors[n].numel() * tensors[n].element_size() for n in names}
    groups: list[list[str]] = []
    if num_shards is not None and num_shards > 1:
        k = min(num_shards, len(names))
        bounds = [round(i * len(names) / k) for i in range(k + 1)]
        groups = [names[bounds[i]:bounds[i + 1]] for i in range(k)]
    elif max_shard_bytes is not None and sum(size.values()) > max_shard_bytes:
        for n in names:  # greedy: start a new shard when the next tensor would overflow this one
            if not groups or (groups[-1] and sum(size[m] for m in groups[-1]) + size[n] > max_shard_bytes):
                groups.append([])
            groups[-1].append(n)
    meta = {"format": "pt"}
    if len(groups) <= 1:
        save_file(tensors, out / SINGLE_FILE, metadata=meta)
        return out
    weight_map = {}
    for i, group in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n] for n in group}, out / fname, metadata=meta)
        weight_map.update({n: fname for n in group})
    index = {"metadata": {"total_size": sum(size.values())}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return out


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied when it is a view into a larger storage (fused projection weights): some
    safetensors versions refuse to save tensors that share memory."""
    return t.clone() if t.untyped_storage().nbytes() != t.numel() * t.element_size() else t


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Any:
    """The model directory's tokenizer (a transformers fast tokenizer) with its chat template.

    Never runs repository code: a ``tokenizer.json`` loads as a standard fast tokenizer; a
    directory with only ``vocab.json`` + ``merges.txt`` (Dream) builds the byte-level BPE
    tokenizer of Qwen2 from them.  Special tokens and the chat template come from
    ``tokenizer_config.json``.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2TokenizerFast

    model_dir = resolve_model_dir(name_or_path)
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    # AutoTokenizer only for a specific transformers class: with repository code it would ask to
    # run it, and for a generic class it parses config.json (unknown model types) for nothing.
    specific = cfg.get("tokenizer_class") not in (None, "PreTrainedTokenizerFast", "TokenizersBackend")
    custom_code = "AutoTokenizer" in (cfg.get("auto_map") or {})
    if (model_dir / "tokenizer.json").is_file():
        tok = None
        if specific and not custom_code:
            try:
                tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
            except (ValueError, OSError, ImportError):
                tok = None  # e.g. a class this transformers lacks: the generic fast tokenizer still works
        if tok is None:
            tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    elif (model_dir / "vocab.json").is_file() and (model_dir / "merges.txt").is_file():
        tok = Qwen2TokenizerFast.from_pretrained(model_dir)
    else:
        raise ModelFilesError(f"{model_dir} has no tokenizer: neither {model_dir / 'tokenizer.json'} nor "
                              "vocab.json + merges.txt exist")
    if getattr(tok, "chat_template", None) is None and cfg.get("chat_template"):
        tok.chat_template = cfg["chat_template"]
    return tok
