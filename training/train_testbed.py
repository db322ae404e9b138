"""Train the shipped testbed models: a LLaDA-architecture masked diffusion LM and an AR guide.

Usage (about 7 minutes on one H100; the step counts adapt to ``--*-budget-s``)::

    python training/train_testbed.py --out-dir dllm_core/assets --device cuda

Writes ``testbed-llada/`` (upstream LLaDA layout: config.json, model.safetensors,
generation_config.json, tokenizer files), ``testbed-ar/`` (a transformers ``LlamaForCausalLM``
via ``save_pretrained``) and ``training_log.json`` (arguments, seed, losses, accuracy of every
evaluated checkpoint, timings) under ``--out-dir``.

The diffusion model is evaluated during training with vanilla greedy decoding (one token per
step) on held-out problems, and the checkpoint kept is the one whose accuracy lies in
``--acc-range`` closest to ``--target-acc``: the project needs a model that is good but not
perfect, so that a strategy losing accuracy shows.  Runs are seeded; the only run-to-run
variation is the number of steps when the time budget cuts it (the log records the steps
taken, and ``--diff-steps N`` with a large budget replays a run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(Path(__file__).resolve().parent)]

from dllm_core.eval import testbed  # noqa: E402
from testbed_data import (EOS_ID, MASK_ID, ar_batch, diffusion_batch, encode, save_tokenizer,  # noqa: E402
                          train_tokenizer)
from testbed_models import (ar_greedy, cosine_lr, greedy_decode, init_weights, llada_config, mdm_loss,  # noqa: E402
                            trainable_attention)

MAX_BYTES = 16 * 1024 * 1024  # per shipped checkpoint (repository size budget)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=str(ROOT / "dllm_core" / "assets"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--train-problems", type=int, default=400_000)
    p.add_argument("--tokenizer-problems", type=int, default=20_000)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=256)
    # diffusion model (about 3.9M parameters: float32 fits the 16 MiB budget)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--mlp-hidden", type=int, default=448)
    p.add_argument("--diff-steps", type=int, default=30_000, help="upper bound; the budget may cut it")
    p.add_argument("--diff-budget-s", type=float, default=270.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=0, help="0: about 80 evaluations per run")
    p.add_argument("--eval-problems", type=int, default=200)
    p.add_argument("--final-eval-problems", type=int, default=1000)
    p.add_argument("--target-acc", type=float, default=0.80)
    p.add_argument("--acc-range", type=float, nargs=2, default=(0.60, 0.95))
    p.add_argument("--early-stop-acc", type=float, default=0.97,
                   help="stop once a checkpoint in range is kept and 3 evaluations in a row reach this")
    p.add_argument("--save-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto: float32 when the checkpoint fits 16 MiB, else bfloat16")
    # AR guide
    p.add_argument("--ar-d-model", type=int, default=256)
    p.add_argument("--ar-layers", type=int, default=4)
    p.add_argument("--ar-heads", type=int, default=8)
    p.add_argument("--ar-mlp", type=int, default=512)
    p.add_argument("--ar-steps", type=int, default=6000)
    p.add_argument("--ar-budget-s", type=float, default=60.0)
    p.add_argument("--ar-lr", type=float, default=1e-3)
    p.add_argument("--engine-check", type=int, default=1000,
                   help="after saving, score this many held-out problems with dllm_core.Engine (0: skip)")
    return p.parse_args(argv)


class Log:
    """training_log.json, rewritten after every phase so that a cut run leaves its record."""

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        self.path = path
        self.data: dict[str, Any] = {"args": vars(args), "seed": args.seed, "torch": torch.__version__,
                                     "device_name": _device_name(args.device), "started": time.time()}

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.data["started"], 1)
        self.path.write_text(json.dumps(self.data, indent=1) + "\n")


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else "cpu"


def autocast(device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def make_optimizer(model: torch.nn.Module, lr: float, device: str) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.startswith("cuda"))


def accuracy(decode, tokenizer, problems: list[testbed.Problem], batch: int = 250) -> tuple[float, list[str]]:
    texts: list[str] = []
    for i in range(0, len(problems), batch):
        chunk = problems[i:i + batch]
        ids = tokenizer([p.prompt for p in chunk], add_special_tokens=False)["input_ids"]
        texts += tokenizer.batch_decode(decode(ids), skip_special_tokens=True)
    acc = sum(testbed.score(t, p.answer) for t, p in zip(texts, problems)) / len(problems)
    return acc, texts


def resolve_steps(max_steps: int, budget_s: float, step_s: float, eval_share: float = 0.1) -> int:
    """Steps that fit the budget at the measured speed, leaving ``eval_share`` for evaluations."""
    return max(1, min(max_steps, int(budget_s * (1 - eval_share) / max(step_s, 1e-6))))


def train_diffusion(args: argparse.Namespace, tok: Any, X: torch.Tensor, V: torch.Tensor, gen_start: int,
                    log: Log) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    from dllm_core.models.llada import LLaDAModel

    dev = args.device
    config = llada_config(args.d_model, args.n_layers, args.n_heads, args.mlp_hidden, args.vocab_size,
                          max_len=256)
    torch.manual_seed(args.seed)
    model = LLaDAModel.from_config(config).to(dev)
    init_weights(model, args.n_layers)
    n_params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(model, args.lr, dev)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    cpu_gen = torch.Generator().manual_seed(args.seed)
    eval_set = testbed.problems(args.eval_problems, seed=10_000 + args.seed, split="test")
    decode = lambda ids: greedy_decode(model, ids, args.gen_length)  # noqa: E731
    rec: dict[str, Any] = {"params": n_params, "config": config, "losses": [], "evals": []}
    log.data["diffusion"] = rec
    total, eval_every = args.diff_steps, args.eval_every or max(1, args.diff_steps // 40)
    lo, hi = args.acc_range
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (distance, step, state)
    t0, t_probe, running = time.time(), None, 0.0
    step = 0
    while step < total:
        if step == 5:
            _sync(dev)
            t_probe = time.time()
        if step == 35 and t_probe is not None:  # resolve the schedule from the measured speed
            _sync(dev)
            step_s = (time.time() - t_probe) / 30
            total = min(args.diff_steps, step + resolve_steps(args.diff_steps, args.diff_budget_s - (time.time() - t0),
                                                              step_s))
            eval_every = args.eval_every or max(50, total // 80)
            rec.update(step_seconds=step_s, resolved_steps=total, eval_every=eval_every)
        lr = cosine_lr(step, total, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, X.shape[0], (args.batch_size,), generator=cpu_gen).to(dev)
        x, valid = X[idx], V[idx]  # the whole token table lives on the device
        model.train()
        with autocast(dev):
            loss = mdm_loss(model, x, valid, gen_start, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += float(loss.detach()) if step % 10 == 0 else 0.0
        step += 1
        if step % 100 == 0:
            rec["losses"].append({"step": step, "loss": round(running / 10, 4), "lr": lr})
            running = 0.0
        if step % eval_every == 0 or step == total:
            model.eval()
            with autocast(dev):
                acc, _ = accuracy(decode, tok, eval_set)
            rec["evals"].append({"step": step, "accuracy": acc, "elapsed_s": round(time.time() - t0, 1)})
            print(f"[diffusion] step {step}/{total} loss {rec['losses'][-1]['loss'] if rec['losses'] else '-'} "
                  f"acc {acc:.3f} ({time.time() - t0:.0f}s)", flush=True)
            if lo <= acc <= hi:
                dist = abs(acc - args.target_acc)
                if best is None or dist <= best[0]:  # ties: the later, better-trained checkpoint
                    best = (dist, step, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
            log.save()
            recent = [e["accuracy"] for e in rec["evals"][-3:]]
            if best is not None and len(recent) == 3 and min(recent) >= args.early_stop_acc:
                rec["early_stop_at"] = step
                break
        if time.time() - t0 > args.diff_budget_s * 1.15:
            rec["stopped_by_time_at"] = step
            break
    rec["train_seconds"] = round(time.time() - t0, 1)
    if best is None:  # nothing in range: keep the last checkpoint, flagged, rather than nothing
        rec["in_range"] = False
        final = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        best = (float("inf"), step, final)
    else:
        rec["in_range"] = True
    rec["chosen_step"] = best[1]
    model.load_state_dict(best[2])
    return model, config, rec


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def pick_dtype(args: argparse.Namespace, n_params: int) -> torch.dtype:
    if args.save_dtype != "auto":
        return getattr(torch, args.save_dtype)
    return torch.float32 if n_params * 4 + 65536 <= MAX_BYTES else torch.bfloat16


def save_diffusion(args: argparse.Namespace, model: Any, config: dict[str, Any], tok: Any, out: Path,
                   rec: dict[str, Any]) -> None:
    from dllm_core.models.loading import save_checkpoint

    dtype = pick_dtype(args, rec["params"])
    model.to(dtype)
    save_checkpoint(model, out, config=config)
    save_tokenizer(tok, out)
    gen_cfg = {"mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID,
               "gen_length": args.gen_length}
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    rec["saved_dtype"] = str(dtype).removeprefix("torch.")
    rec["weights_bytes"] = (out / "model.safetensors").stat().st_size
    # Report what ships: the stored (possibly rounded) weights, on the harness's default problems.
    model.float().eval()
    final = testbed.problems(args.final_eval_problems, seed=0, split="test")
    with autocast(args.device):
        acc, texts = accuracy(lambda ids: greedy_decode(model, ids, args.gen_length), tok, final)
    rec["final_eval"] = {"problems": len(final), "seed": 0, "accuracy": acc, "decoding": "greedy low-confidence, "
                         "1 token/step, no blocks, bf16 autocast" if args.device.startswith("cuda") else "fp32",
                         "samples": [{"prompt": p.prompt, "output": t, "answer": p.answer}
                                     for p, t in list(zip(final, texts))[:5]]}
    print(f"[diffusion] saved step {rec['chosen_step']} ({rec['saved_dtype']}); held-out accuracy {acc:.3f}",
          flush=True)


def train_ar(args: argparse.Namespace, tok: Any, enc: Any, out: Path, log: Log) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    dev = args.device
    cfg = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.ar_d_model, intermediate_size=args.ar_mlp,
                      num_hidden_layers=args.ar_layers, num_attention_heads=args.ar_heads,
                      num_key_value_heads=args.ar_heads, max_position_embeddings=256, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=None, eos_token_id=EOS_ID,
                      pad_token_id=EOS_ID)
    torch.manual_seed(args.seed + 1)
    model = LlamaForCausalLM(cfg).to(dev)
    rec: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()), "losses": [], "evals": []}
    log.data["ar"] = rec
    opt = make_optimizer(model, args.ar_lr, dev)
    cpu_gen = torch.Generator().manual_seed(args.seed + 1)
    eval_set = testbed.problems(args.eval_problems, seed=10_000 + args.seed, split="test")
    decode = lambda ids: ar_greedy(model, ids, args.gen_length)  # noqa: E731
    total, t0, t_probe, step, running = args.ar_steps, time.time(), None, 0, 0.0
    while step < total:
        if step == 5:
            _sync(dev)
            t_probe = time.time()
        if step == 35 and t_probe is not None:
            _sync(dev)
            total = min(args.ar_steps, step + resolve_steps(args.ar_steps, args.ar_budget_s - (time.time() - t0),
                                                            (time.time() - t_probe) / 30, eval_share=0.05))
            rec["resolved_steps"] = total
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, total, args.ar_lr, args.warmup)
        idx = torch.randint(0, len(enc.prompts), (args.batch_size,), generator=cpu_gen).tolist()
        ids, att, labels = (t.to(dev) for t in ar_batch(enc, idx))
        model.train()
        with autocast(dev):
            loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += float(loss.detach()) if step % 10 == 0 else 0.0
        step += 1
        if step % 100 == 0:
            rec["losses"].append({"step": step, "loss": round(running / 10, 4)})
            running = 0.0
        if time.time() - t0 > args.ar_budget_s * 1.15:
            rec["stopped_by_time_at"] = step
            break
    rec["train_seconds"], rec["steps"] = round(time.time() - t0, 1), step
    model.eval()
    with autocast(dev):
        acc, _ = accuracy(decode, tok, eval_set)
    rec["evals"].append({"step": step, "accuracy": acc})
    dtype = pick_dtype(args, rec["params"])
    model.to(dtype)
    model.generation_config.pad_token_id = EOS_ID
    model.generation_config.eos_token_id = EOS_ID
    model.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(tok, out)
    rec["saved_dtype"] = str(dtype).removeprefix("torch.")
    model.float()
    final = testbed.problems(args.final_eval_problems, seed=0, split="test")
    with autocast(dev):
        rec["final_eval"] = {"problems": len(final), "accuracy": accuracy(decode, tok, final)[0]}
    print(f"[ar] {step} steps, held-out accuracy {rec['final_eval']['accuracy']:.3f}", flush=True)


def engine_check(args: argparse.Namespace, llada_dir: Path, log: Log) -> None:
    """Score the saved model through the real engine (vanilla strategy) as a cross-check."""
    try:
        from dllm_core import Engine
        from dllm_core.eval.runner import run_eval

        engine = Engine(model=str(llada_dir), device=args.device)
        r = run_eval(engine, "testbed", limit=args.engine_check, batch_size=250, gen_length=args.gen_length,
                     progress=False)
        log.data["engine_vanilla"] = {k: r[k] for k in ("accuracy", "n", "nfe", "tokens_per_step",
                                                        "tokens_per_second", "config") if k in r}
        print(f"[engine] vanilla accuracy {r['accuracy']:.3f}", flush=True)
    except Exception as e:  # noqa: BLE001 - the check is advisory; its failure is logged, not fatal
        log.data["engine_vanilla_error"] = f"{type(e).__name__}: {e}"
        print(f"[engine] check failed: {e}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out_dir)
    llada_dir, ar_dir = out / "testbed-llada", out / "testbed-ar"
    for d in (llada_dir, ar_dir):
        d.mkdir(parents=True, exist_ok=True)
    log = Log(out / "training_log.json", args)
    t0 = time.time()
    train = testbed.problems(args.train_problems, seed=args.seed, split="train")
    tok = train_tokenizer([p.prompt + p.completion for p in train[:args.tokenizer_problems]], args.vocab_size)
    if len(tok) > args.vocab_size:
        raise SystemExit(f"tokenizer has {len(tok)} tokens, more than --vocab-size {args.vocab_size}")
    enc = encode(tok, [p.prompt for p in train], [p.completion for p in train], args.gen_length)
    X, V, gen_start = diffusion_batch(enc, range(len(enc.prompts)), args.gen_length)
    log.data["data"] = {"train_problems": len(enc.prompts), "tokenizer_size": len(tok), "seq_len": X.shape[1],
                        "prompt_len": gen_start, "seconds": round(time.time() - t0, 1)}
    print(f"[data] {len(enc.prompts)} problems, tokenizer {len(tok)}, seq {X.shape[1]}", flush=True)
    with trainable_attention():  # SDPA for training and the built-in evaluations (see its docstring)
        model, config, rec = train_diffusion(args, tok, X.to(args.device), V.to(args.device), gen_start, log)
        save_diffusion(args, model, config, tok, llada_dir, rec)
    log.save()
    del model
    train_ar(args, tok, enc, ar_dir, log)
    log.save()
    if args.engine_check:
        engine_check(args, llada_dir, log)
    log.data["total_seconds"] = round(time.time() - t0, 1)
    log.save()
    return 0 if rec["in_range"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
