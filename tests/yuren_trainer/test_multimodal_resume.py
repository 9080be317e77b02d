"""Stages 2 and 3 interrupted after a checkpoint and started again end exactly where the uninterrupted run did."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import (
    CPU_FLAGS,
    llava_records,
    mark_history,
    resumed_from_marked,
    step_logs,
    write_images,
    write_json,
)

from yuren_trainer.checkpoints import COMPLETE_MARKER
from yuren_trainer.projector import PROJECTOR_FILE

pytestmark = pytest.mark.slow

# 4 records in batches of 2: checkpoint-2 ends the first epoch, the run ends at step 4 in the second.
SHARED_FLAGS = [
    "--per_device_train_batch_size", "2", "--model_max_length", "256", "--max_steps", "4",
    "--learning_rate", "1e-3", "--warmup_steps", "1", "--seed", "3", "--logging_steps", "1",
    "--save_strategy", "steps", "--save_steps", "2", *CPU_FLAGS,
]  # fmt: skip


def run_whole_and_resumed(run: Callable[[Path], None], tmp_path: Path) -> tuple[Path, Path]:
    """``run(output)`` uninterrupted, then again in a folder holding only its checkpoint-2: the two outputs.

    Both runs logged every step alike, and the second took up checkpoint-2's history.
    """
    whole = tmp_path / "whole"
    run(whole)
    # Interrupted after checkpoint-2 was complete: nothing later on disk.
    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    assert (resumed / "checkpoint-2" / COMPLETE_MARKER).is_file()
    mark_history(resumed / "checkpoint-2")
    run(resumed)

    assert [s for s, *_ in step_logs(whole)] == [1, 2, 3, 4]
    assert resumed_from_marked(resumed)
    assert step_logs(resumed) == step_logs(whole)
    return whole, resumed


def assert_same_weights(got_file: Path, expected_file: Path) -> None:
    got, expected = load_file(got_file), load_file(expected_file)
    assert got.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(got[k], expected[k])] == []


def projector_changed(before_file: Path, after_file: Path) -> bool:
    before, after = load_file(before_file), load_file(after_file)
    return any(not torch.equal(after[k], before[k]) for k in after if k.startswith("mm_projector."))


def test_stage2_resumed_after_a_checkpoint_ends_with_the_same_projector_and_losses(
    prepared_base, tiny_clip_id, tmp_path
):
    from yuren_trainer.clip_sft import main

    write_images(tmp_path / "images")
    train = write_json(tmp_path / "captions.json", llava_records())

    def run(output):
        main(
            [
                "--model_name_or_path", str(prepared_base), "--clip_model", tiny_clip_id,
                "--train_file", str(train), "--image_folder", str(tmp_path / "images"),
                "--output_dir", str(output), "--data_cache_dir", str(tmp_path / "cache"), *SHARED_FLAGS,
            ]
        )  # fmt: skip

    whole, resumed = run_whole_and_resumed(run, tmp_path)
    # The steps after the checkpoint moved the projector, so a resumed run that skipped them would differ.
    assert projector_changed(whole / "checkpoint-2" / "model.safetensors", whole / "model.safetensors")
    assert_same_weights(resumed / "model.safetensors", whole / "model.safetensors")
    assert set(load_file(whole / PROJECTOR_FILE)) == {"mm_projector.weight", "mm_projector.bias"}
    assert_same_weights(resumed / PROJECTOR_FILE, whole / PROJECTOR_FILE)


def test_stage3_resumed_after_a_checkpoint_ends_with_the_same_weights_and_losses(fused_model_dir, tmp_path):
    from yuren_trainer.multimodal_sft import main

    write_images(tmp_path / "images")
    train = write_json(tmp_path / "llava.json", llava_records())

    def run(output):
        main(
            [
                "--model_name_or_path", str(fused_model_dir), "--train_file", str(train),
                "--image_folder", str(tmp_path / "images"), "--output_dir", str(output),
                "--data_cache_dir", str(tmp_path / "cache"), *SHARED_FLAGS,
            ]
        )  # fmt: skip

    whole, resumed = run_whole_and_resumed(run, tmp_path)
    assert projector_changed(whole / "checkpoint-2" / "model.safetensors", whole / "model.safetensors")
    assert_same_weights(resumed / "model.safetensors", whole / "model.safetensors")
