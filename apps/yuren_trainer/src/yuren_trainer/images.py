"""The images of the multimodal stages: checked before training, loaded per batch, present on every rank.

:func:`check_images` opens every image the records name once, before any
training: a missing file, one that is not an image, or one over the pixel limit
stops the run with the record and the file named, instead of crashing hours in.
It reads headers only (plus :meth:`PIL.Image.Image.verify`), so it stays cheap.

:class:`FolderImageLoader` turns a batch's image paths into ``pixel_values``
for the collators. :class:`ImageInEveryBatch` gives a batch without images one
all-ignored image row, so that under DDP and DeepSpeed ZeRO-3 every rank runs
the vision tower and the projector in every step (see its docstring).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from yuren_core.constants import IGNORE_INDEX
from yuren_core.records import Conversation, DataError, ErrorReport, batches
from yuren_core.vision import ImageProcessor

# Distinct image paths handed to the pool at a time.
CHECK_BATCH = 4096


class ImageFileError(DataError):
    """An image named by the data cannot be used; the message names the record and the file."""


def resolve(image_folder: str | os.PathLike, path: str) -> Path:
    """Where a record's image path points: relative paths are relative to ``image_folder``."""
    return Path(image_folder) / path


def image_file_problem(file: Path, *, max_pixels: int) -> str | None:
    """What is wrong with the image file ``file`` (``None`` if nothing): missing, undecodable, or too large.

    Only the header is read and the file's structure verified; no pixel is decoded.
    """
    if not file.is_file():
        return "no such file"
    try:
        with warnings.catch_warnings():
            # Pillow warns before its own (higher) limit; ours is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return (
                        f"{width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,} "
                        "(--max_image_pixels); downscale it, or raise the limit if you trust the source"
                    )
                image.verify()
    except Image.DecompressionBombError as error:
        return f"too large to decode safely ({error})"
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow raises UnidentifiedImageError (an OSError) for non-images and SyntaxError for broken chunks.
        return f"cannot be decoded as an image ({type(error).__name__}: {error})"
    return None


def check_images(
    conversations: Iterable[Conversation],
    image_folder: str | os.PathLike,
    *,
    max_pixels: int,
    workers: int = 8,
) -> int:
    """Check every image the conversations name; return how many distinct files were checked.

    The conversations are taken as a stream; the files are checked by a pool of
    ``workers`` threads, a batch of new paths at a time, so memory holds the
    distinct paths seen and one batch. Raises :class:`ImageFileError` listing
    each record with an unusable image (up to ``MAX_REPORTED_ERRORS``), its
    path as written and the file it resolved to.
    """
    seen: set[str] = set()
    errors = ErrorReport()

    def first_uses() -> Iterator[tuple[str, str]]:
        for conversation in conversations:
            for path in conversation.images:
                if path not in seen:
                    seen.add(path)
                    yield path, conversation.source

    def problem(path: str) -> str | None:
        return image_file_problem(resolve(image_folder, path), max_pixels=max_pixels)

    # Threads overlap the file-system waits; the work per file is a header read.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in batches(first_uses(), CHECK_BATCH):
            for (path, source), found in zip(batch, pool.map(problem, [p for p, _ in batch]), strict=True):
                if found is not None:
                    errors.add(f"{source}: image {path!r} ({resolve(image_folder, path)}): {found}")
    if errors.count:
        raise ImageFileError(
            errors.message(f"{errors.count} unusable image(s) (paths relative to --image_folder {image_folder})")
        )
    return len(seen)


class FolderImageLoader:
    """A collator's image loader: image paths (relative to ``image_folder``) in, ``pixel_values`` out."""

    def __init__(self, processor: ImageProcessor, image_folder: str | os.PathLike):
        self.processor = processor
        self.image_folder = Path(image_folder)

    def __call__(self, paths: Sequence[str]) -> torch.Tensor:
        tensors = []
        for path in paths:
            file = resolve(self.image_folder, path)
            try:
                tensors.append(self.processor.preprocess(file))
            except (OSError, ValueError) as error:
                raise ImageFileError(f"image {path!r} ({file}): {error}") from error
        return torch.stack(tensors)


class ImageInEveryBatch:
    """Wrap a collator so that a batch without images still carries one image, which no loss depends on.

    Under DeepSpeed ZeRO-3 the vision tower's and the projector's weights are
    gathered from all ranks when they run, and under DDP the projector's
    gradients are averaged across ranks: a rank that skipped them because its
    micro-batch held only text would leave the others waiting forever. So a
    text-only batch gets one extra row holding just an image block (input
    ``<|img_start|>`` + patches + ``<|img_end|>``, every label ignored) and a
    blank image for it. The row attends only to itself and has no labels, so
    the loss and every gradient are exactly what they would be without it.
    """

    def __init__(self, collator, *, image_block: Sequence[int], image_size: tuple[int, int]):
        self.collator = collator
        self.image_size = tuple(image_size)
        self.dummy_row = {
            "input_ids": list(image_block),
            "labels": [IGNORE_INDEX] * len(image_block),
            "images": [],
            "seq_lengths": [len(image_block)],
        }

    def __call__(self, rows: Sequence[Mapping]) -> dict:
        if any(row.get("images") for row in rows):
            return self.collator(rows)
        batch = self.collator([*rows, self.dummy_row])
        batch["pixel_values"] = torch.zeros(1, 3, *self.image_size)
        return batch
