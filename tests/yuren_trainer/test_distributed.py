"""The ranks split the data even where accelerate miscounts them (CPU-only torchrun, with or without DeepSpeed)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from yuren_trainer import distributed


def fake_process_group(monkeypatch, world_size: int, rank: int) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world_size)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)


def test_accelerate_counts_are_corrected_to_the_process_group(monkeypatch):
    # What accelerate 1.15 reports on rank 1 of `torchrun --nproc_per_node=2 ... --deepspeed` without a GPU.
    state = SimpleNamespace(num_processes=1, process_index=0, local_process_index=0)
    fake_process_group(monkeypatch, world_size=2, rank=1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    distributed.reconcile_process_counts(state)
    assert (state.num_processes, state.process_index, state.local_process_index) == (2, 1, 1)


def test_correct_counts_and_single_processes_are_left_alone(monkeypatch):
    state = SimpleNamespace(num_processes=2, process_index=1, local_process_index=1)
    fake_process_group(monkeypatch, world_size=2, rank=1)
    distributed.reconcile_process_counts(state)
    assert (state.num_processes, state.process_index) == (2, 1)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    alone = SimpleNamespace(num_processes=1, process_index=0, local_process_index=0)
    distributed.reconcile_process_counts(alone)
    assert (alone.num_processes, alone.process_index) == (1, 0)


def test_cpu_torchrun_without_deepspeed_asks_for_a_cpu_process_group(monkeypatch):
    monkeypatch.setattr(distributed, "has_accelerator", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.needs_cpu_process_group(SimpleNamespace(deepspeed=None, use_cpu=False))
    # DeepSpeed brings its own process group, and use_cpu would switch DeepSpeed off.
    assert not distributed.needs_cpu_process_group(SimpleNamespace(deepspeed="ds.json", use_cpu=False))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.needs_cpu_process_group(SimpleNamespace(deepspeed=None, use_cpu=False))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "has_accelerator", lambda: True)
    assert not distributed.needs_cpu_process_group(SimpleNamespace(deepspeed=None, use_cpu=False))


def test_the_counts_are_reconciled_when_transformers_sets_up_the_devices(monkeypatch, tmp_path):
    # SFTTrainingArguments overrides TrainingArguments._setup_devices (private): if transformers renames it or stops
    # caching it, this fails and names the seam, instead of the ranks silently training on all the data.
    from functools import cached_property

    from transformers import TrainingArguments

    from yuren_trainer.arguments import SFTTrainingArguments

    assert isinstance(TrainingArguments.__dict__.get("_setup_devices"), cached_property), (
        "transformers' TrainingArguments._setup_devices changed; see yuren_trainer/arguments.py"
    )
    seen = []
    monkeypatch.setattr(distributed, "reconcile_process_counts", seen.append)
    args = SFTTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert args.device.type == "cpu"
    assert seen == [args.distributed_state]
