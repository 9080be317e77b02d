"""Stage 1 (``yuren_trainer.text_sft``) that SIGKILLs itself at a chosen point: run as a script, under torchrun too.

``YUREN_KILL=when:step:rank`` picks the point, on rank ``rank`` only:

* ``complete:N``: right after checkpoint-N is marked complete (a checkpoint boundary);
* ``optimizer:N``: half-way through writing an optimizer state file of checkpoint-N.

The process kills itself by its own PID, so nothing (no ``finally``, no atexit
handler, no flush) runs after that point: what a crash or the OOM killer leaves.
"""

from __future__ import annotations

import io
import os
import signal
import sys

import torch

from yuren_trainer import checkpoints
from yuren_trainer.text_sft import main


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(when: str, step: int) -> None:
    """Patch the save path so that this process dies at ``when`` of checkpoint-``step``."""
    if when == "complete":
        on_save = checkpoints.CheckpointCompletion.on_save

        def on_save_then_die(self, args, state, control, **kwargs):
            control = on_save(self, args, state, control, **kwargs)
            if state.global_step == step:
                die()
            return control

        checkpoints.CheckpointCompletion.on_save = on_save_then_die
    elif when == "optimizer":
        save = torch.save

        def save_half_then_die(obj, f, *args, **kwargs):
            name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else ""
            if f"checkpoint-{step}" in name and "optim" in os.path.basename(name):
                buffer = io.BytesIO()
                save(obj, buffer, *args, **kwargs)
                with open(name, "wb") as file:
                    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                die()
            return save(obj, f, *args, **kwargs)

        torch.save = save_half_then_die
    else:
        raise ValueError(f"YUREN_KILL: unknown point {when!r}")


if __name__ == "__main__":
    if os.environ.get("YUREN_KILL"):
        when, step, rank = os.environ["YUREN_KILL"].split(":")
        if int(os.environ.get("RANK", "0")) == int(rank):
            arm(when, int(step))
    main(sys.argv[1:])
