"""Making every rank train on its own share of the data, even where accelerate miscounts the ranks.

The Trainer shards batches across ranks by accelerate's process count. On a
machine without a GPU, accelerate (1.15) gets that count wrong for the two
launches YuRen's commands use:

* ``torchrun ... --deepspeed cfg.json``: DeepSpeed starts a process group of N
  ranks, but accelerate finds no GPU backend and reports ``num_processes=1`` and
  ``process_index=0`` on every rank. Each rank then trains on the whole dataset
  (N times the steps), every rank believes it is the main process (and writes
  the same files), and the DeepSpeed batch size is computed for one rank.
* ``torchrun ...`` without DeepSpeed: accelerate starts no process group at all
  unless told to use the CPU, so the ranks train N independent models.

This module is the one place that corrects both: :func:`needs_cpu_process_group`
asks accelerate for its CPU (gloo) process group in the second case, and
:func:`reconcile_process_counts` makes accelerate's counts agree with
``torch.distributed`` in the first. ``use_cpu`` cannot fix the first case: it
turns DeepSpeed off.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)


def launched_world_size() -> int:
    """The number of ranks the launcher (torchrun, deepspeed, mpirun) started; 1 without a launcher."""
    for name in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 1


def has_accelerator() -> bool:
    """Whether torch sees a GPU-like device accelerate would pick over the CPU."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return accelerator.is_available()
    return torch.cuda.is_available()


def needs_cpu_process_group(args) -> bool:
    """True for a multi-rank launch without DeepSpeed on a machine without a GPU.

    accelerate only creates the (gloo) process group for such a run when asked
    to use the CPU; without it every rank trains its own model on all the data.
    """
    return launched_world_size() > 1 and not args.deepspeed and not args.use_cpu and not has_accelerator()


def reconcile_process_counts(state) -> None:
    """Make accelerate's ``state`` count the ranks ``torch.distributed`` runs.

    ``state`` is the ``PartialState`` the Trainer's arguments set up. It is
    shared by every accelerate object of the process, so correcting it here
    corrects the data sharding, the main-process checks and the DeepSpeed batch
    size, which are all derived from it later. Does nothing when the counts
    already agree.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world_size = torch.distributed.get_world_size()
    rank = torch.distributed.get_rank()
    if state.num_processes == world_size and state.process_index == rank:
        return
    logger.warning(
        "accelerate counted %d process(es) (this one #%d) but torch.distributed runs %d ranks (this one #%d); "
        "using the torch.distributed counts so that the ranks split the data",
        state.num_processes,
        state.process_index,
        world_size,
        rank,
    )
    state.num_processes = world_size
    state.process_index = rank
    state.local_process_index = int(os.environ.get("LOCAL_RANK", rank))
