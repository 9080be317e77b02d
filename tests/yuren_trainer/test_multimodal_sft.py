"""Stage 3 (multimodal SFT): what it trains, where it can start, LoRA, ZeRO-3 with a text-only rank, and proof it sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from repo_helpers import PROJECT_DATA, REPO, free_port
from safetensors.torch import load_file
from trainer_helpers import CPU_FLAGS, trainer_state, write_json

from make_demo_model.pipeline import colour_accuracy
from make_tiny_model.shapes import COLOURS

pytestmark = pytest.mark.slow


def is_tower(key: str) -> bool:
    return key.startswith("vision_tower.")


def test_stage3_trains_projector_and_language_model_never_the_tower(tiny_pipeline):
    _, run = tiny_pipeline
    before, after = load_file(run.stage2 / "model.safetensors"), load_file(run.stage3 / "model.safetensors")
    assert set(before) == set(after)
    tower = [k for k in before if is_tower(k)]
    assert tower and all(torch.equal(before[k], after[k]) for k in tower)
    unchanged = [k for k in before if not is_tower(k) and torch.equal(before[k], after[k])]
    assert unchanged == [], f"stage 3 left these untrained: {unchanged}"


def test_the_trained_model_names_the_colour_of_unseen_shapes_and_only_from_the_image(tiny_pipeline, tmp_path):
    _, run = tiny_pipeline
    chance = 1 / len(COLOURS)
    accuracy = colour_accuracy(run.stage3, tmp_path / "held-out")
    blind = colour_accuracy(run.stage3, tmp_path / "held-out", zero_image_features=True)
    assert accuracy >= 0.9, f"held-out colour accuracy {accuracy:.1%}"
    # Without image features every image gets the same answer: right at most as often as the commonest colour.
    assert blind <= 2 * chance, f"colour accuracy with zeroed image features {blind:.1%} (chance {chance:.1%})"


def stage3_flags(run, output: Path, *extra: str) -> list[str]:
    images = json.loads((run.shapes / "conversations.json").read_text())[:8]
    train_file = write_json(output.parent / f"{output.name}-llava.json", images)
    return [
        "--train_file", str(train_file), "--image_folder", str(run.shapes), "--output_dir", str(output),
        "--per_device_train_batch_size", "4", "--model_max_length", "256",
        "--data_cache_dir", str(output.parent / "cache"), *extra, *CPU_FLAGS,
    ]  # fmt: skip


def test_stage3_from_a_stage1_model_and_projector_file_starts_where_stage2_ended(tiny_pipeline, tmp_path):
    from yuren_trainer.multimodal_sft import main

    _, run = tiny_pipeline
    output = tmp_path / "stage3"
    main(
        [
            "--model_name_or_path", str(run.stage1), "--projector_path", str(run.stage2 / "mm_projector.safetensors"),
            "--clip_model", f"local-dir:{run.tiny / 'clip'}",
            # No learning: the saved model is exactly the model the run assembled.
            *stage3_flags(run, output, "--max_steps", "1", "--learning_rate", "0"),
        ]
    )  # fmt: skip
    assembled, stage2 = load_file(output / "model.safetensors"), load_file(run.stage2 / "model.safetensors")
    assert set(assembled) == set(stage2)
    for key, value in stage2.items():
        assert torch.equal(assembled[key], value), key


def test_stage3_with_lora_trains_adapter_projector_and_new_tokens_and_merges(tiny_pipeline, tmp_path):
    from merge_lora.merge import merge
    from yuren_core.loading import load_model
    from yuren_trainer.multimodal_sft import main

    _, run = tiny_pipeline
    output = tmp_path / "lora"
    lora_config = REPO / "apps" / "yuren_trainer" / "config" / "qlora.json"
    main(
        [
            "--model_name_or_path", str(run.stage2), "--use_lora", "True", "--lora_config", str(lora_config),
            *stage3_flags(run, output, "--max_steps", "3", "--learning_rate", "5e-3"),
        ]
    )  # fmt: skip
    adapter = load_file(output / "adapter_model.safetensors")
    assert any("lora_B" in k for k in adapter) and all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert not any("vision_tower" in k for k in adapter)
    projector = {k: v for k, v in adapter.items() if "mm_projector" in k}
    assert {k.rsplit(".", 1)[-1] for k in projector} == {"weight", "bias"}

    merged_dir = merge(str(run.stage2), str(output), tmp_path / "merged")
    merged, _, _ = load_model(merged_dir)
    stage2 = load_file(run.stage2 / "model.safetensors")
    merged_state = merged.state_dict()
    assert not torch.equal(merged_state["mm_projector.weight"], stage2["mm_projector.weight"])
    assert all(torch.equal(merged_state[k], v) for k, v in stage2.items() if is_tower(k))
    assert not torch.equal(
        merged_state["model.layers.0.self_attn.q_proj.weight"], stage2["model.layers.0.self_attn.q_proj.weight"]
    )


def test_zero3_on_two_ranks_completes_when_one_rank_only_ever_gets_text(tiny_pipeline, tmp_path):
    _, run = tiny_pipeline
    # 4 image conversations, then 4 text ones, read in order in batches of 4 on each of 2 ranks: every step,
    # rank 0 gets the 4 image conversations and rank 1 the 4 text ones. Without an image on rank 1 too, the
    # ZeRO-3 gathers of the tower's and projector's weights that rank 0 starts would never be answered.
    images = json.loads((run.shapes / "conversations.json").read_text())[:4]
    texts = [r for r in json.loads(PROJECT_DATA.read_text()) if "conversations" in r][:4]
    output = tmp_path / "stage3"
    command = [
        str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node=2", f"--master_port={free_port()}",
        "-m", "yuren_trainer.multimodal_sft",
        "--model_name_or_path", str(run.stage2),
        "--train_file", str(write_json(tmp_path / "llava.json", images)),
        "--text_train_file", str(write_json(tmp_path / "text.json", texts)),
        "--image_folder", str(run.shapes), "--model_max_length", "512",
        "--per_device_train_batch_size", "4", "--train_sampling_strategy", "sequential",
        "--learning_rate", "1e-3", "--logging_steps", "1",
        "--deepspeed", "apps/yuren_trainer/config/deepspeed_config.json", "--output_dir", str(output),
        "--data_cache_dir", str(tmp_path / "cache"), *CPU_FLAGS,
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    # Stage 3's default of 2 epochs, one step each.
    assert trainer_state(output)["global_step"] == 2
    before, after = load_file(run.stage2 / "model.safetensors"), load_file(output / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if is_tower(k))
    assert not torch.equal(before["mm_projector.weight"], after["mm_projector.weight"])
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
