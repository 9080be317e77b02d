"""Which checkpoint a run resumes from: the last one known to be complete.

The Trainer writes a checkpoint file by file (weights, optimizer shards of every
rank, scheduler, RNG states, trainer state); a crash in the middle leaves a
``checkpoint-N`` folder that looks like the newest one but cannot be resumed
from. :class:`CheckpointCompletion` therefore writes a marker into a checkpoint
once every rank has finished saving it, and only marked checkpoints count.
Unmarked ones found at startup are renamed out of the Trainer's way
(``incomplete-checkpoint-N``), so they are neither resumed from, overwritten in
place, nor counted by ``--save_total_limit``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "yuren_checkpoint_complete.json"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    """The step in a ``checkpoint-N`` folder name, or ``None`` for any other name."""
    match = _CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a checkpoint every rank finished saving (marker present, trainer state readable)."""
    path = Path(path)
    try:
        marker = json.loads((path / COMPLETE_MARKER).read_text())
        state = json.loads((path / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("global_step") == state.get("global_step") == checkpoint_step(path)


def checkpoints(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``output_dir``, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir``, or ``None``."""
    complete = [p for p in checkpoints(output_dir) if is_complete(p)]
    return complete[-1] if complete else None


def set_aside_incomplete(output_dir: Path) -> list[Path]:
    """Rename every incomplete ``checkpoint-N`` in ``output_dir`` to ``incomplete-checkpoint-N``; return the new paths.

    Call it on the main process only, before training starts.
    """
    moved = []
    for path in checkpoints(output_dir):
        if is_complete(path):
            continue
        target = path.with_name(f"incomplete-{path.name}")
        suffix = 1
        while target.exists():
            target = path.with_name(f"incomplete-{path.name}.{suffix}")
            suffix += 1
        path.rename(target)
        logger.warning("%s was not saved completely (interrupted?); moved it to %s and ignoring it", path, target)
        moved.append(target)
    return moved


class CheckpointCompletion(TrainerCallback):
    """Marks each checkpoint complete once all ranks have saved their part of it."""

    def on_save(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Rank 0 must not vouch for shards other ranks are still writing.
            torch.distributed.barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                (folder / COMPLETE_MARKER).write_text(json.dumps({"global_step": state.global_step}))
        return control
