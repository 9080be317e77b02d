"""prepare-base-model end to end on the tiny base, and its errors."""

import json
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

from yuren_core.chatml import render
from yuren_core.vocab import load_tokenizer, special_ids


def test_prepared_base_loads_and_renders(prepared_base, tiny_dir):
    files = sorted(p.name for p in prepared_base.iterdir())
    assert "model.safetensors" in files and not [f for f in files if f.endswith((".bin", ".pt"))]
    tokenizer = load_tokenizer(str(prepared_base))
    model = AutoModelForCausalLM.from_pretrained(prepared_base)
    assert model.config.vocab_size % 128 == 0
    assert len(tokenizer) <= model.config.vocab_size
    ids = special_ids(tokenizer)
    assert ids.pad not in (ids.im_start, ids.im_end, ids.eos)
    batch = torch.tensor(
        [render(tokenizer, [{"from": "human", "value": "你好"}], add_generation_prompt=True).input_ids]
    )
    assert model(batch).logits.shape[-1] == model.config.vocab_size
    # Rows of the base vocabulary are untouched.
    base = AutoModelForCausalLM.from_pretrained(tiny_dir / "base")
    n = base.config.vocab_size
    assert torch.equal(model.get_input_embeddings().weight[:n], base.get_input_embeddings().weight)


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "prepare_base_model", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_cli_writes_output_and_refuses_to_clobber(tiny_dir, tmp_path):
    out = tmp_path / "prepared"
    done = run_cli("--base", str(tiny_dir / "base"), "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert "[4/4]" in done.stdout
    assert json.loads((out / "config.json").read_text())["vocab_size"] % 128 == 0
    again = run_cli("--base", str(tiny_dir / "base"), "--output", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_missing_base_is_one_clear_message(tmp_path):
    out = tmp_path / "out"
    done = run_cli("--base", str(tmp_path / "no-such-model"), "--output", str(out))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "could not load the base model" in done.stderr and "--base" in done.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
    hub = run_cli("--base", "nobody/not-a-model", "--output", str(out))
    assert hub.returncode == 2 and "hub" in hub.stderr and "Traceback" not in hub.stderr
