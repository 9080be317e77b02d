"""Upstream's stage-1 command lines under a 2-process torchrun on CPU: ZeRO-3 full fine-tuning and QLoRA.

Each line is upstream's, with only the model path, the data files, the output
directory and ``--nproc_per_node`` changed, plus ``--bf16 False --tf32 False``
for a machine without a GPU. Where a test changes another value it says why.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from repo_helpers import PROJECT_DATA, REPO, free_port
from safetensors.torch import load_file
from trainer_helpers import trainer_state, write_json

from yuren_trainer.checkpoints import COMPLETE_MARKER, is_complete
from yuren_trainer.qlora import QLoRASettings

pytestmark = pytest.mark.slow

FULL_FINE_TUNING = """
torchrun --nproc_per_node=8 -m yuren_trainer.text_sft
  --model_name_or_path "dist/yuren-7b-base" --train_file 'train.json'
  --validation_file 'validation.json' --model_max_length 4096
  --num_train_epochs 1 --per_device_eval_batch_size 4 --per_device_train_batch_size 4
  --gradient_accumulation_steps 4 --evaluation_strategy "steps" --eval_steps 340
  --save_strategy "steps" --save_steps 340 --save_total_limit 8 --learning_rate 2e-5
  --weight_decay 0. --lr_scheduler_type "cosine" --logging_steps 10
  --run_name yuren-llama-7b-stage1 --warmup_ratio 0.03
  --dataloader_drop_last True --group_by_length True --tf32 True --bf16 True
  --deepspeed "apps/yuren_trainer/config/deepspeed_config.json" --output_dir "dist/yuren-7b-stage1"
"""

QLORA = """
torchrun --nproc_per_node=8 -m yuren_trainer.text_sft
  --model_name_or_path "dist/yuren-7b-base" --train_file 'train.json'
  --validation_file 'validation.json' --model_max_length 4096
  --num_train_epochs 1 --per_device_eval_batch_size 4 --per_device_train_batch_size 4
  --gradient_accumulation_steps 8 --evaluation_strategy "steps" --eval_steps 340
  --save_strategy "steps" --save_steps 340 --save_total_limit 8 --learning_rate 5e-5
  --weight_decay 0 --lr_scheduler_type "cosine" --logging_steps 4 --tf32 True --bf16 True
  --run_name yuren-llama-7b-qlora-stage1 --warmup_ratio 0.03 --gradient_checkpointing True
  --dataloader_drop_last True --group_by_length True --optim "paged_adamw_8bit" --max_grad_norm 0.5
  --use_lora True --lora_config "apps/yuren_trainer/config/qlora.json" --output_dir "dist/yuren-7b-stage1"
"""


def upstream_command(line: str, nproc: int, changes: dict[str, str]) -> list[str]:
    """Upstream's command line on ``nproc`` processes, with the values of ``changes`` swapped in."""
    words = shlex.split(line)
    assert words[:2] == ["torchrun", "--nproc_per_node=8"]
    for flag, value in changes.items():
        words[words.index(flag) + 1] = value  # every changed flag is one upstream already passes
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, f"--nproc_per_node={nproc}", f"--master_port={free_port()}", *words[2:]]


def run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
    }
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def tensors(tree):
    """Every tensor in a nested dict (bitsandbytes nests its quantized optimizer state)."""
    for value in tree.values():
        if torch.is_tensor(value):
            yield value
        elif isinstance(value, dict):
            yield from tensors(value)


def project_conversations_file(path: Path, count: int) -> Path:
    conversations = [r for r in json.loads(PROJECT_DATA.read_text()) if "__comment__" not in r]
    return write_json(path, [conversations[i % len(conversations)] for i in range(count)])


def test_zero3_full_fine_tuning_splits_the_data_across_ranks(prepared_base, tmp_path):
    output = tmp_path / "stage1"
    command = upstream_command(
        FULL_FINE_TUNING,
        2,
        {
            "--model_name_or_path": str(prepared_base),
            "--train_file": str(project_conversations_file(tmp_path / "train.json", 240)),
            "--validation_file": str(project_conversations_file(tmp_path / "validation.json", 8)),
            "--output_dir": str(output),
            "--bf16": "False",
            "--tf32": "False",
            # One optimizer step per batch, so the step count shows how the 240 samples were split.
            "--gradient_accumulation_steps": "1",
            # Evaluate and save within the 30 steps of this run, and keep it quick.
            "--eval_steps": "15",
            "--save_steps": "15",
            "--model_max_length": "512",
        },
    )
    result = run(command, tmp_path)

    # 240 samples / (4 per device x 2 ranks) = 30 steps; 60 would mean every rank trained on everything.
    state = trainer_state(output)
    assert state["global_step"] == 30
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [15, 30]
    assert all("padding_share" in e for e in state["log_history"] if "loss" in e)
    assert "wandb" in result.stdout + result.stderr and list(tmp_path.glob("wandb/offline-run-*"))

    # Consolidated 16-bit-capable weights a plain from_pretrained loads, not only DeepSpeed shards.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(output)
    trained, base = model.state_dict(), load_file(prepared_base / "model.safetensors")
    assert (output / "model.safetensors").is_file()
    assert set(base) <= set(trained)
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    assert is_complete(output / "checkpoint-30") and (output / "checkpoint-30" / COMPLETE_MARKER).is_file()
    assert sorted(p.name for p in (output / "checkpoint-30").glob("rng_state_*.pth")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]


def test_qlora_trains_the_adapter_and_new_token_rows_and_merges(qlora_base, tmp_path):
    output = tmp_path / "qlora"
    command = upstream_command(
        QLORA,
        2,
        {
            "--model_name_or_path": str(qlora_base),
            "--train_file": str(project_conversations_file(tmp_path / "train.json", 32)),
            "--validation_file": str(project_conversations_file(tmp_path / "validation.json", 8)),
            "--output_dir": str(output),
            "--bf16": "False",
            "--tf32": "False",
            # 32 samples / (4 x 2 ranks) = 4 batches: one optimizer step per batch, evaluated and saved midway.
            "--gradient_accumulation_steps": "1",
            "--eval_steps": "2",
            "--save_steps": "2",
            "--model_max_length": "256",
            # A tiny model needs a larger step to move visibly in 4 steps.
            "--learning_rate": "5e-3",
        },
    )
    run(command, tmp_path)

    state = trainer_state(output)
    assert state["global_step"] == 4
    assert any("eval_loss" in e for e in state["log_history"])
    adapter_config = json.loads((output / "adapter_config.json").read_text())
    assert adapter_config["r"] == 64 and adapter_config["lora_alpha"] == 16
    assert set(adapter_config["target_modules"]) == set(QLoRASettings().lora_target_modules)
    adapter = load_file(output / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert len(lora_b) == 2 * 7 and all(v.abs().sum() > 0 for v in lora_b)
    token_rows = {k: v for k, v in adapter.items() if "trainable_tokens" in k}
    assert {k.split(".token_adapter")[0].rsplit(".", 1)[-1] for k in token_rows} == {"embed_tokens", "lm_head"}
    assert all(v.abs().sum() > 0 for v in token_rows.values())
    # paged_adamw_8bit ran as an 8-bit optimizer on CPU: its moment estimates are stored in uint8.
    optimizer_state = torch.load(output / "checkpoint-4" / "optimizer.pt", weights_only=False)["state"]
    assert any(tensor.dtype == torch.uint8 for tensor in tensors(optimizer_state))

    from merge_lora.__main__ import main as merge_lora

    merged_dir = tmp_path / "merged"
    merge_lora(
        ["--base-model-path", str(qlora_base), "--lora-path", str(output), "--target-model-path", str(merged_dir)]
    )
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from yuren_core.chatml import render
    from yuren_core.vocab import load_tokenizer

    tokenizer = load_tokenizer(str(merged_dir))
    prompt = render(tokenizer, [{"from": "human", "value": "你好, who are you?"}], add_generation_prompt=True)
    ids = torch.tensor([prompt.input_ids])
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(qlora_base), output).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(qlora_base).eval()
    with torch.no_grad():
        adapted_logits, merged_logits, base_logits = (m(input_ids=ids).logits for m in (adapted, merged, base))
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=1e-4, atol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-2
