"""The lifecycle every SFT stage shares, written once: parse, set up, train, save.

A stage's recipe (:mod:`yuren_trainer.text_sft`, :mod:`~yuren_trainer.clip_sft`,
:mod:`~yuren_trainer.multimodal_sft`) states only what differs, as a
:class:`Stage`: its flags, how it builds its model and data, and what it saves
besides the checkpoint. :func:`run_stage` does the rest: logging, the seed,
the Trainer, resuming from the last complete checkpoint, saving, and turning
errors the user can act on into a message and exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import transformers
from transformers import set_seed

from yuren_core.cli import exit_on
from yuren_core.records import DataError
from yuren_core.vocab import special_ids

from . import checkpoints
from .arguments import UsageError, parse_args
from .checkpoints import CheckpointCompletion
from .qlora import QLoRAConfigError
from .segment_attention import use_for_packing
from .trainer import SFTTrainer

logger = logging.getLogger("yuren_trainer")


def setup_logging(args) -> None:
    """Log YuRen's messages at INFO on the main process, warnings only elsewhere; libraries per ``--log_level``."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout, level=logging.WARNING
    )
    logger.setLevel(logging.INFO if args.should_log else logging.WARNING)
    library_level = args.get_process_log_level()
    transformers.utils.logging.set_verbosity(library_level)
    datasets.utils.logging.set_verbosity(library_level)


def check_reporting(args) -> None:
    """Fail before any heavy work when ``--report_to wandb`` cannot log (not logged in, no offline mode)."""
    if "wandb" not in args.report_to or os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return
    import wandb

    try:
        wandb.login(verify=False)
    except wandb.errors.UsageError as error:
        raise UsageError(
            f"--report_to wandb: {error} Log in with `wandb login`, or set WANDB_MODE=offline to log to local files "
            "(sync them later with `wandb sync`), or pass --report_to none."
        ) from None


def resume_checkpoint(args) -> str | None:
    """The checkpoint to resume from: ``--resume_from_checkpoint`` if given, else the last complete one.

    Incomplete checkpoints in ``--output_dir`` are first moved aside by the main
    process, so the Trainer neither resumes from nor writes into them.
    """
    if args.resume_from_checkpoint:
        path = Path(args.resume_from_checkpoint)
        if not checkpoints.is_complete(path):
            raise UsageError(
                f"--resume_from_checkpoint {path} is not a complete checkpoint (missing, or its saving was cut short; "
                f"complete ones hold {checkpoints.COMPLETE_MARKER})"
            )
        return str(path)
    with args.main_process_first(desc="checking checkpoints", local=False):
        if args.should_save:
            checkpoints.set_aside_incomplete(Path(args.output_dir))
    last = checkpoints.last_complete_checkpoint(Path(args.output_dir))
    return str(last) if last else None


def train_and_save(trainer, args):
    """Train (resuming from the last complete checkpoint, if any), then save model and tokenizer to ``--output_dir``."""
    resume_from = resume_checkpoint(args)
    if resume_from:
        logger.info("resuming from %s (to start over instead, pass another --output_dir)", resume_from)
    else:
        logger.info("no complete checkpoint in %s; training from the start", args.output_dir)
    result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model(args.output_dir)
    trainer.save_state()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    logger.info("saved the trained model to %s", args.output_dir)
    return result


@dataclass
class StageSetup:
    """What a stage's ``set_up`` returns: the model, its tokenizer, the data and how it is batched."""

    model: Any
    tokenizer: Any
    train_dataset: Any
    eval_dataset: Any
    data_collator: Callable
    packing: bool


@dataclass(frozen=True)
class Stage:
    """What sets one stage apart from the others.

    ``arguments`` are the ``HfArgumentParser`` dataclasses, the training
    arguments last; ``set_up(*parsed)`` receives them parsed, once logging and
    the seed are in place. ``after_save(setup, args)``, if given, runs once the
    model is saved.
    """

    name: str
    arguments: Sequence[type]
    set_up: Callable[..., StageSetup]
    after_save: Callable[[StageSetup, Any], None] | None = None


def run_stage(stage: Stage, argv: list[str] | None = None) -> None:
    """Parse the flags, set up data and model, train, save; errors the user can act on exit with status 2."""
    parsed = parse_args(tuple(stage.arguments), argv, prog=f"python -m yuren_trainer.{stage.name}")
    args = parsed[-1]
    setup_logging(args)
    with exit_on(stage.name, UsageError, DataError, QLoRAConfigError):
        check_reporting(args)
        set_seed(args.seed)
        setup = stage.set_up(*parsed)
        if setup.packing:
            use_for_packing(setup.model)
        pad_token_id = special_ids(setup.tokenizer).pad
        trainer = SFTTrainer(
            model=setup.model,
            args=args,
            train_dataset=setup.train_dataset,
            eval_dataset=setup.eval_dataset,
            data_collator=setup.data_collator,
            processing_class=setup.tokenizer,
            callbacks=[CheckpointCompletion()],
            pad_token_id=pad_token_id,
        )
        train_and_save(trainer, args)
        if stage.after_save:
            stage.after_save(setup, args)
