"""dllm-run: run, plugins, env, and the errors a user sees."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys


import dllm_core.engine as engine_mod
from dllm_core.cli.main import main


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_run_json(capsys, tiny_dirs):
    rc, out, err = run_cli(capsys, "--model", str(tiny_dirs["llada"]), "--gen-length", "8", "--block-length", "4",
                           "--json", "w3 w4 w5")
    assert rc == 0, err
    obj = json.loads(out)
    assert {"text", "nfe", "steps", "seconds", "config"} <= set(obj)
    assert obj["nfe"] == 8 and obj["config"]["block_length"] == 4
    assert obj["config"]["strategy"]["cache"]["name"] == "none"


def test_run_from_file_batched(capsys, tiny_dirs, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("w3 w4\nw5 w6 w7\nw8\n")
    rc, out, err = run_cli(capsys, "--model", str(tiny_dirs["dream"]), "-f", str(f), "--batch-size", "2",
                           "--gen-length", "8", "--scheduler", "maskgit_plus", "--json")
    assert rc == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2 and len(lines[0]["text"]) == 2 and isinstance(lines[1]["text"], str)


def test_scheduler_options_from_cli(capsys, tiny_dirs):
    rc, out, err = run_cli(capsys, "--model", str(tiny_dirs["dream"]), "--scheduler", "maskgit_plus",
                           "--scheduler-opt", "top_p=0.5", "--gen-length", "4", "--json", "w3")
    assert rc == 0, err
    assert json.loads(out)["config"]["strategy"]["scheduler"]["options"]["top_p"] == 0.5


def test_unknown_plugin_lists_available(capsys, tiny_dirs):
    rc, out, err = run_cli(capsys, "--model", str(tiny_dirs["llada"]), "--cache", "nosuch", "w3")
    assert rc == 2 and "unknown cache policy 'nosuch'" in err and "none" in err


def test_bad_option_value_names_option_and_range(capsys, tiny_dirs):
    rc, out, err = run_cli(capsys, "--model", str(tiny_dirs["llada"]), "--scheduler", "maskgit_plus",
                           "--scheduler-opt", "top_p=3", "w3")
    assert rc == 2 and "top_p" in err and "(0.0, 1.0]" in err
    rc, out, err = run_cli(capsys, "--model", str(tiny_dirs["llada"]), "--scheduler-opt", "bogus", "w3")
    assert rc == 2 and "KEY=VALUE" in err


def test_prompt_too_long(capsys, tiny_dirs):
    rc, out, err = run_cli(capsys, "--model", str(tiny_dirs["llada"]), "--gen-length", "500", " ".join(["w3"] * 40))
    assert rc == 2 and "40 tokens" in err and "gen_length 500" in err and "512" in err


def test_missing_model_files(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "--model", str(tmp_path), "w3")
    assert rc == 2 and "config.json" in err


def test_no_default_model_says_so(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(engine_mod, "DEFAULT_MODEL_DIR", tmp_path / "absent")
    rc, out, err = run_cli(capsys, "w3")
    assert rc == 2 and "no default model" in err and "--model" in err


def test_plugins_json(capsys):
    rc, out, err = run_cli(capsys, "plugins", "--json")
    obj = json.loads(out)
    assert set(obj) == {"caches", "schedulers", "guides", "models"}
    assert {"name", "description"} <= set(obj["schedulers"][0])
    assert "low_confidence" in {s["name"] for s in obj["schedulers"]}


def test_env_json(capsys):
    rc, out, err = run_cli(capsys, "env", "--json")
    obj = json.loads(out)
    assert {"torch", "device", "extension"} <= set(obj)
    assert "loaded" in obj["extension"] and "ops" in obj["extension"]


def test_stdin_prompt(tiny_dirs):
    exe = shutil.which("dllm-run")
    cmd = [exe] if exe else [sys.executable, "-m", "dllm_core.cli.main"]
    proc = subprocess.run(cmd + ["--model", str(tiny_dirs["llada"]), "--gen-length", "4", "--json"],
                          input="w3 w4\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["nfe"] == 4


def test_cuda_graphs_flag_needs_a_cuda_device(capsys, tiny_dirs):
    rc, out, err = run_cli(capsys, "--model", str(tiny_dirs["llada"]), "--device", "cpu", "--cuda-graphs", "w3")
    assert rc == 2 and "cuda_graphs" in err and "CUDA device" in err
