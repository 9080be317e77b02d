"""Stage 3 interrupted after a checkpoint and started again ends exactly where the uninterrupted run did."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import CPU_FLAGS, llava_records, trainer_state, write_images, write_json

from yuren_trainer.checkpoints import COMPLETE_MARKER


@pytest.mark.slow
def test_stage3_resumed_after_a_checkpoint_ends_with_the_same_weights_and_losses(fused_model_dir, tmp_path):
    from yuren_trainer.multimodal_sft import main

    write_images(tmp_path / "images")
    train = write_json(tmp_path / "llava.json", llava_records())

    def run(output):
        # 4 records in batches of 2: checkpoint-2 ends the first epoch, the run ends at step 4 in the second.
        main(
            [
                "--model_name_or_path", str(fused_model_dir), "--train_file", str(train),
                "--image_folder", str(tmp_path / "images"), "--output_dir", str(output),
                "--per_device_train_batch_size", "2", "--model_max_length", "256", "--max_steps", "4",
                "--learning_rate", "1e-3", "--warmup_steps", "1", "--seed", "3", "--logging_steps", "1",
                "--save_strategy", "steps", "--save_steps", "2", "--data_cache_dir", str(tmp_path / "cache"),
                *CPU_FLAGS,
            ]
        )  # fmt: skip

    whole = tmp_path / "whole"
    run(whole)
    # Interrupted after checkpoint-2 was complete: nothing later on disk.
    interrupted = tmp_path / "interrupted"
    shutil.copytree(whole / "checkpoint-2", interrupted / "checkpoint-2")
    assert (interrupted / "checkpoint-2" / COMPLETE_MARKER).is_file()
    # Tag the history kept in checkpoint-2, to see it come back when training resumes from there.
    state_file = interrupted / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"][0]["resumed_from_here"] = True
    state_file.write_text(json.dumps(state))
    run(interrupted)

    def step_logs(output):
        return [
            (e["step"], e["loss"], e["grad_norm"], e["learning_rate"])
            for e in trainer_state(output)["log_history"]
            if "loss" in e
        ]

    assert [s for s, *_ in step_logs(whole)] == [1, 2, 3, 4]
    assert trainer_state(interrupted)["log_history"][0].get("resumed_from_here") is True
    assert step_logs(interrupted) == step_logs(whole)
    expected, got = load_file(whole / "model.safetensors"), load_file(interrupted / "model.safetensors")
    start = load_file(fused_model_dir / "model.safetensors")
    assert any(not torch.equal(expected[k], start[k]) for k in expected)
    assert got.keys() == expected.keys() and any(k.startswith("mm_projector.") for k in expected)
    assert [k for k in expected if not torch.equal(got[k], expected[k])] == []
