"""The steps every SFT stage takes around its model: logging, data, resuming, training, saving.

A stage's recipe (``text_sft``, and the multimodal stages) parses its flags,
builds its model, and hands the rest to these helpers.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import datasets
import transformers

from . import checkpoints
from .arguments import DataArguments, UsageError
from .collator import ImageLoader, PackedCollator, PaddingCollator
from .data import TokenizeStats, load_sft_dataset

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


def load_datasets(
    data_args: DataArguments,
    args,
    tokenizer,
    *,
    image_seq_len: int | None = None,
):
    """Tokenized training and validation datasets (``None`` without ``--validation_file``).

    The main process tokenizes and fills the cache first; the other ranks then
    read the cache.
    """
    if args.eval_strategy != "no" and not data_args.validation_file:
        raise UsageError(f"--eval_strategy {args.eval_strategy} needs --validation_file")
    train = load_data_file("train", data_args.train_file, data_args, args, tokenizer, image_seq_len=image_seq_len)
    validation = None
    if data_args.validation_file:
        validation = load_data_file(
            "validation", data_args.validation_file, data_args, args, tokenizer, image_seq_len=image_seq_len
        )
    return train, validation


def load_data_file(name: str, path: str, data_args: DataArguments, args, tokenizer, *, image_seq_len: int | None):
    """One tokenized data file, through the cache (the main process fills it first), with its stats logged."""
    with args.main_process_first(desc=f"tokenizing {path}"):
        dataset, stats = load_sft_dataset(
            path,
            tokenizer,
            max_length=data_args.model_max_length,
            packing=data_args.packing,
            image_seq_len=image_seq_len,
            cache_dir=data_args.data_cache_dir,
        )
    _log_stats(name, path, stats, dataset, data_args)
    return dataset


def _log_stats(name: str, path: str, stats: TokenizeStats, dataset, data_args: DataArguments) -> None:
    logger.info("%s", stats.describe(f"{name} data {path}"))
    if data_args.packing:
        capacity = len(dataset) * data_args.model_max_length
        logger.info(
            "%s: packed %d conversations into %d rows; %.1f%% of the rows' %d-token capacity is padding",
            name,
            stats.kept,
            len(dataset),
            100 * (1 - stats.tokens / capacity),
            data_args.model_max_length,
        )


def make_collator(data_args: DataArguments, pad_token_id: int, *, image_loader: ImageLoader | None = None):
    """The collator for ``--packing``: packed rows with position ids, or padded rows with an attention mask."""
    collator = PackedCollator if data_args.packing else PaddingCollator
    return collator(pad_token_id, image_loader=image_loader)


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
