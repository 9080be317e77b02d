"""Only checkpoints every rank finished saving are resumed from."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from yuren_trainer import checkpoints
from yuren_trainer.checkpoints import COMPLETE_MARKER, CheckpointCompletion


def make_checkpoint(output_dir: Path, step: int, *, marker_step: int | None = None, state: bool = True) -> Path:
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if marker_step is not None:
        (folder / COMPLETE_MARKER).write_text(json.dumps({"global_step": marker_step}))
    return folder


def test_the_last_complete_checkpoint_wins_over_newer_incomplete_ones(tmp_path):
    make_checkpoint(tmp_path, 10, marker_step=10)
    expected = make_checkpoint(tmp_path, 20, marker_step=20)
    make_checkpoint(tmp_path, 30)  # crashed before the marker
    make_checkpoint(tmp_path, 40, marker_step=40, state=False)  # trainer state never written
    make_checkpoint(tmp_path, 50, marker_step=10)  # a marker that belongs to another step
    (tmp_path / "checkpoint-notes").mkdir()
    assert checkpoints.last_complete_checkpoint(tmp_path) == expected
    assert checkpoints.last_complete_checkpoint(tmp_path / "missing") is None


def test_incomplete_checkpoints_are_moved_out_of_the_trainers_way(tmp_path):
    make_checkpoint(tmp_path, 10, marker_step=10)
    make_checkpoint(tmp_path, 30)
    (tmp_path / "incomplete-checkpoint-30").mkdir()  # left by an earlier crash
    moved = checkpoints.set_aside_incomplete(tmp_path)
    assert moved == [tmp_path / "incomplete-checkpoint-30.1"]
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["checkpoint-10"]


def test_the_callback_marks_a_saved_checkpoint_complete(tmp_path):
    folder = make_checkpoint(tmp_path, 7)
    assert not checkpoints.is_complete(folder)
    args = SimpleNamespace(output_dir=str(tmp_path))
    CheckpointCompletion().on_save(args, SimpleNamespace(global_step=7, is_world_process_zero=True), control=None)
    assert checkpoints.is_complete(folder)


def test_save_total_limit_neither_counts_nor_deletes_set_aside_checkpoints(tmp_path):
    from transformers.trainer_utils import rotate_checkpoints

    make_checkpoint(tmp_path, 2, marker_step=2)
    make_checkpoint(tmp_path, 4)  # cut short by a crash
    checkpoints.set_aside_incomplete(tmp_path)
    make_checkpoint(tmp_path, 6, marker_step=6)
    make_checkpoint(tmp_path, 8, marker_step=8)
    # What the Trainer runs after each save with --save_total_limit 2.
    rotate_checkpoints(str(tmp_path), save_total_limit=2)
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["checkpoint-6", "checkpoint-8"]
    assert (tmp_path / "incomplete-checkpoint-4" / "model.safetensors").read_bytes() == b"weights"
    assert checkpoints.last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-8"
