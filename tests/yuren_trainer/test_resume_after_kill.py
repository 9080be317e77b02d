"""Stage 1 killed for real (SIGKILL by PID) and started again: it ends where an uninterrupted run ends.

Each run is a subprocess that kills itself at a chosen point (see
``killed_training.py``); the same command then runs again in the same
``--output_dir``. The chain of kills covers a checkpoint boundary, a checkpoint
cut short in the middle of writing the optimizer state, and a run killed after
its final checkpoint (before its final save), whose rerun must train no more.
The end must equal an uninterrupted run exactly: weights, and per step the
logged loss, grad norm and learning rate.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from repo_helpers import REPO, free_port
from safetensors.torch import load_file
from trainer_helpers import CPU_FLAGS, MEMORY_CONVERSATIONS, step_logs, trainer_state, write_json

from yuren_trainer.checkpoints import is_complete

pytestmark = pytest.mark.slow

KILLED_TRAINING = Path(__file__).with_name("killed_training.py")
MAX_STEPS = 6
# 24 conversations in batches of 2: 12 steps an epoch, so the run ends mid-epoch (where the Trainer would
# otherwise train one step past a finished run's last checkpoint).
TRAIN_RECORDS = MEMORY_CONVERSATIONS * 6


def stage1_flags(base: Path, train: Path, output: Path, cache: Path, batch_size: int) -> list[str]:
    return [
        "--model_name_or_path", str(base), "--train_file", str(train), "--model_max_length", "64",
        "--per_device_train_batch_size", str(batch_size), "--max_steps", str(MAX_STEPS),
        "--learning_rate", "1e-3", "--lr_scheduler_type", "linear", "--warmup_steps", "2", "--seed", "7",
        "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "2",
        "--output_dir", str(output), "--data_cache_dir", str(cache), *CPU_FLAGS,
    ]  # fmt: skip


def run(launcher: list[str], flags: list[str], tmp_path: Path, kill: str | None = None) -> None:
    """Run stage 1 through ``killed_training.py``; with ``kill`` it must die by SIGKILL at that point."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    env.pop("YUREN_KILL", None)
    if kill:
        env["YUREN_KILL"] = kill
    # In a session of its own, so a run that hangs can be ended with every rank torchrun started.
    process = subprocess.Popen(
        [*launcher, str(KILLED_TRAINING), *flags],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    log = stdout[-3000:] + stderr[-5000:]
    if kill is None:
        assert process.returncode == 0, log
    elif launcher == [sys.executable]:
        assert process.returncode == -signal.SIGKILL, log
    else:
        # torchrun reports the dead rank and stops the others.
        assert process.returncode != 0 and "Signal 9 (SIGKILL)" in log, log


def assert_same_end(resumed: Path, whole: Path) -> None:
    assert trainer_state(resumed)["global_step"] == MAX_STEPS
    assert step_logs(resumed) == step_logs(whole)
    assert [s for s, *_ in step_logs(whole)] == list(range(1, MAX_STEPS + 1))
    expected, got = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_single_process_killed_three_times_ends_as_an_uninterrupted_run(prepared_base, tmp_path):
    train = write_json(tmp_path / "train.json", TRAIN_RECORDS)
    python = [sys.executable]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run(python, stage1_flags(prepared_base, train, whole, tmp_path / "cache", 2), tmp_path)
    flags = stage1_flags(prepared_base, train, resumed, tmp_path / "cache", 2)

    run(python, flags, tmp_path, kill="complete:2:0")
    assert is_complete(resumed / "checkpoint-2") and not (resumed / "checkpoint-3").exists()
    run(python, flags, tmp_path, kill="optimizer:4:0")
    assert (resumed / "checkpoint-4").is_dir() and not is_complete(resumed / "checkpoint-4")
    run(python, flags, tmp_path, kill=f"complete:{MAX_STEPS}:0")
    assert (resumed / "incomplete-checkpoint-4").is_dir() and is_complete(resumed / "checkpoint-4")
    assert is_complete(resumed / f"checkpoint-{MAX_STEPS}") and not (resumed / "model.safetensors").exists()
    run(python, flags, tmp_path)

    assert_same_end(resumed, whole)


# Four 2-rank launches; the first on a fresh machine also compiles DeepSpeed's CPU communication op.
@pytest.mark.timeout(1800)
def test_zero3_on_two_ranks_killed_at_a_boundary_and_mid_write_ends_as_an_uninterrupted_run(prepared_base, tmp_path):
    train = write_json(tmp_path / "train.json", TRAIN_RECORDS)
    torchrun = str(Path(sys.executable).with_name("torchrun"))

    def launcher() -> list[str]:
        return [torchrun, "--nproc_per_node=2", f"--master_port={free_port()}"]

    zero3 = ["--deepspeed", str(REPO / "apps" / "yuren_trainer" / "config" / "deepspeed_config.json")]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    # One conversation per rank and step: 12 steps an epoch, as in the single-process test.
    run(launcher(), [*stage1_flags(prepared_base, train, whole, tmp_path / "cache", 1), *zero3], tmp_path)
    flags = [*stage1_flags(prepared_base, train, resumed, tmp_path / "cache", 1), *zero3]

    run(launcher(), flags, tmp_path, kill="complete:2:0")
    assert is_complete(resumed / "checkpoint-2")
    # Rank 1 dies writing its optimizer shard; rank 0 may have finished its own.
    run(launcher(), flags, tmp_path, kill="optimizer:4:1")
    assert (resumed / "checkpoint-4").is_dir() and not is_complete(resumed / "checkpoint-4")
    run(launcher(), flags, tmp_path)

    assert (resumed / "incomplete-checkpoint-4").is_dir()
    assert_same_end(resumed, whole)
