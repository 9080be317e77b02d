"""The data a stage trains on: its tokenized datasets (text, or image + text) and the collator that batches them.

The main process tokenizes and fills the cache first; next the first process
of each other node (a hit where the nodes share the cache's filesystem, its
own copy where they do not); the other ranks then read their node's cache.
Image records have every image checked up front; the images themselves are
loaded per batch by the collator.
"""

from __future__ import annotations

import logging

import datasets
from transformers.trainer_utils import IntervalStrategy

from yuren_core.chatml import image_block
from yuren_core.records import read_conversations
from yuren_core.vision import ImageProcessor
from yuren_core.vocab import special_ids

from .arguments import DataArguments, ImageDataArguments, UsageError
from .collator import ImageLoader, PackedCollator, PaddingCollator
from .data import TokenizeStats, default_num_workers, load_sft_dataset
from .images import FolderImageLoader, ImageInEveryBatch, check_images

logger = logging.getLogger("yuren_trainer")


def load_datasets(
    data_args: DataArguments,
    args,
    tokenizer,
    *,
    image_seq_len: int | None = None,
):
    """Tokenized training and validation datasets (``None`` without ``--validation_file``)."""
    if args.eval_strategy != "no" and not data_args.validation_file:
        # The Trainer holds the flag as an enum; say it as it is typed.
        strategy = IntervalStrategy(args.eval_strategy).value
        raise UsageError(
            f"--eval_strategy {strategy} needs --validation_file (pass one, or drop --eval_strategy to train without "
            "evaluating)"
        )
    train = load_data_file("train", data_args.train_file, data_args, args, tokenizer, image_seq_len=image_seq_len)
    validation = None
    if data_args.validation_file:
        validation = load_data_file(
            "validation", data_args.validation_file, data_args, args, tokenizer, image_seq_len=image_seq_len
        )
    return train, validation


def load_data_file(name: str, path: str, data_args: DataArguments, args, tokenizer, *, image_seq_len: int | None):
    """One tokenized data file, through the cache (the main process fills it first), with its stats logged."""
    # Globally first, then each node's first: nodes that share the cache never tokenize into it at once.
    with (
        args.main_process_first(desc=f"tokenizing {path}", local=False),
        args.main_process_first(desc=f"tokenizing {path}"),
    ):
        dataset, stats = load_sft_dataset(
            path,
            tokenizer,
            max_length=data_args.model_max_length,
            packing=data_args.packing,
            image_seq_len=image_seq_len,
            cache_dir=data_args.data_cache_dir,
            num_proc=num_workers(data_args),
        )
    _log_stats(name, path, stats, dataset, data_args)
    return dataset


def num_workers(data_args: DataArguments) -> int:
    """``--preprocessing_num_workers``, or by default :func:`~yuren_trainer.data.default_num_workers`."""
    return data_args.preprocessing_num_workers or default_num_workers()


def _log_stats(name: str, path: str, stats: TokenizeStats, dataset, data_args: DataArguments) -> None:
    logger.info("%s", stats.describe(f"{name} data {path}"))
    if data_args.packing:
        capacity = len(dataset) * data_args.model_max_length
        logger.info(
            "%s: packed %d conversations into %d rows; %.1f%% of the rows' %d-token capacity is empty (never computed: "
            "each batch is one row of its tokens)",
            name,
            stats.kept,
            len(dataset),
            100 * (1 - stats.tokens / capacity),
            data_args.model_max_length,
        )


def make_collator(data_args: DataArguments, pad_token_id: int, *, image_loader: ImageLoader | None = None):
    """The collator for ``--packing``: packed rows with position ids, or padded rows with an attention mask."""
    if data_args.packing:
        # --packing runs per-conversation attention, so a batch's rows can be one row with no padding.
        return PackedCollator(pad_token_id, image_loader=image_loader, flatten=True)
    return PaddingCollator(pad_token_id, image_loader=image_loader)


def check_data_images(files: list[str], data_args: ImageDataArguments, args) -> None:
    """Check every image the records of ``files`` name (main process of each node; the others wait).

    The records are read as a stream and the images checked by a pool of ``--preprocessing_num_workers`` threads.
    """
    with args.main_process_first(desc="checking images"):
        if args.local_process_index == 0:
            for path in files:
                count = check_images(
                    read_conversations(path),
                    data_args.image_folder,
                    max_pixels=data_args.max_image_pixels,
                    workers=num_workers(data_args),
                )
                logger.info("%s: %d image file(s) checked", path, count)


def load_image_datasets(
    data_args: ImageDataArguments,
    args,
    tokenizer,
    *,
    image_seq_len: int,
    text_train_file: str | None = None,
):
    """Check the images, then tokenize ``--train_file`` (+ ``text_train_file``) and ``--validation_file``.

    The training rows are the image conversations followed by the text ones;
    the Trainer's sampler mixes them.
    """
    files = [f for f in (data_args.train_file, data_args.validation_file, text_train_file) if f]
    check_data_images(files, data_args, args)
    train, validation = load_datasets(data_args, args, tokenizer, image_seq_len=image_seq_len)
    if text_train_file:
        text = load_data_file("text", text_train_file, data_args, args, tokenizer, image_seq_len=image_seq_len)
        train = datasets.concatenate_datasets([train, text])
    return train, validation


def make_image_collator(data_args: ImageDataArguments, args, tokenizer, config):
    """The ``--packing`` collator, loading images as the model ``config`` says; with several ranks, every batch has one.

    Images are preprocessed as serving will (the config's preprocessing), with
    the ``--max_image_pixels`` limit the up-front check used.
    """
    processor = ImageProcessor.from_config(config, max_pixels=data_args.max_image_pixels)
    ids = special_ids(tokenizer)
    collator = make_collator(data_args, ids.pad, image_loader=FolderImageLoader(processor, data_args.image_folder))
    if args.world_size > 1:
        collator = ImageInEveryBatch(
            collator, image_block=image_block(ids, config.image_seq_len), image_size=processor.image_size
        )
    return collator
