"""Collators: rows of token ids (and image paths) in, model-ready batches out.

:class:`PaddingCollator` right-pads one conversation per row and gives the
model an ``attention_mask``. :class:`PackedCollator` takes packed rows and
gives the model ``position_ids`` that restart at 0 for every conversation, no
``attention_mask`` and ``use_cache=False``: transformers then derives a
block-diagonal causal mask from the position ids, so no token attends across a
conversation boundary.
Its padding is one more such block, attending only to itself, with no labels;
with ``flatten=True`` it puts the whole batch in one row and pads nothing.

Rows may carry image paths (``images``); given an ``image_loader`` (paths in,
``[images, 3, H, W]`` tensor out) the collators add ``pixel_values`` in the
order the images appear in the batch. Text-only training passes none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from yuren_core.constants import IGNORE_INDEX

ImageLoader = Callable[[Sequence[str]], torch.Tensor]


class _Collator:
    def __init__(
        self, pad_token_id: int, *, image_loader: ImageLoader | None = None, pad_to_multiple_of: int | None = None
    ):
        self.pad_token_id = pad_token_id
        self.image_loader = image_loader
        self.pad_to_multiple_of = pad_to_multiple_of

    def _padded_ids_and_labels(self, rows: Sequence[Mapping]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``labels`` of ``rows``, right-padded to one length (pad id / ``IGNORE_INDEX``)."""
        length = max(len(row["input_ids"]) for row in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.as_tensor(row["input_ids"])
            labels[i, :n] = torch.as_tensor(row["labels"])
        return input_ids, labels

    def _add_images(self, batch: dict, rows: Sequence[Mapping]) -> dict:
        paths = [path for row in rows for path in row.get("images") or ()]
        if not paths:
            return batch
        if self.image_loader is None:
            raise ValueError(
                f"the batch names {len(paths)} image(s) (first: {paths[0]!r}) but the collator has no image loader; "
                "text-only training takes conversations without images"
            )
        batch["pixel_values"] = self.image_loader(paths)
        return batch


class PaddingCollator(_Collator):
    """Right-pad each row (one conversation) to the longest in the batch; labels padded with ``IGNORE_INDEX``."""

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        input_ids, labels = self._padded_ids_and_labels(rows)
        attention_mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):
            attention_mask[i, : len(row["input_ids"])] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        return self._add_images(batch, rows)


class PackedCollator(_Collator):
    """Batch packed rows with per-conversation ``position_ids`` and no ``attention_mask``.

    Each row's ``seq_lengths`` gives the lengths of the conversations packed in
    it; a row without that column is a single conversation.

    ``flatten=True`` puts the whole batch in one row of exactly its tokens: no
    padding at all (a batch's rows are rarely all full; its last row can be
    nearly empty). Only for attention that keeps conversations apart by their
    position ids without building a mask over the row
    (:mod:`yuren_trainer.segment_attention`, what ``--packing`` uses): a dense
    mask over one long row costs the square of the batch's tokens.
    """

    def __init__(
        self,
        pad_token_id: int,
        *,
        image_loader: ImageLoader | None = None,
        pad_to_multiple_of: int | None = None,
        flatten: bool = False,
    ):
        super().__init__(pad_token_id, image_loader=image_loader, pad_to_multiple_of=pad_to_multiple_of)
        self.flatten = flatten

    def __call__(self, rows: Sequence[Mapping]) -> dict:
        if self.flatten:
            rows = [_concatenated(rows)]
        input_ids, labels = self._padded_ids_and_labels(rows)
        length = input_ids.shape[1]
        position_ids = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            seq_lengths = _seq_lengths(i, row)
            if length > n:
                seq_lengths.append(length - n)
            position_ids[i] = torch.cat([torch.arange(k) for k in seq_lengths])
            # The first token of each conversation must not be a target of the one before it.
            starts = torch.cumsum(torch.tensor([0, *seq_lengths[:-1]]), 0)
            labels[i, starts] = IGNORE_INDEX
        # transformers derives the per-conversation mask from position ids only when no cache is in use.
        batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "use_cache": False}
        return self._add_images(batch, rows)


def _concatenated(rows: Sequence[Mapping]) -> dict[str, list]:
    """``rows`` as one row: tokens, labels and images in order, each row's conversations kept apart."""
    joined: dict[str, list] = {"input_ids": [], "labels": [], "seq_lengths": [], "images": []}
    for i, row in enumerate(rows):
        joined["input_ids"] += row["input_ids"]
        joined["labels"] += row["labels"]
        joined["seq_lengths"] += _seq_lengths(i, row)
        joined["images"] += row.get("images") or []
    return joined


def _seq_lengths(index: int, row: Mapping) -> list[int]:
    """The lengths of the conversations packed in batch row ``index`` (checked against its tokens)."""
    n = len(row["input_ids"])
    seq_lengths = list(row.get("seq_lengths") or [n])
    if sum(seq_lengths) != n:
        raise ValueError(f"row {index}: seq_lengths {seq_lengths} do not add up to its {n} tokens")
    return seq_lengths


def padding_tokens(batch: Mapping[str, torch.Tensor], pad_token_id: int) -> tuple[int, int]:
    """``(padding, total)`` token counts of a collated batch."""
    input_ids = batch["input_ids"]
    if "attention_mask" in batch:
        padding = int((batch["attention_mask"] == 0).sum())
    else:
        # Packed batches have no mask; the pad token never comes out of the renderer.
        padding = int((input_ids == pad_token_id).sum())
    return padding, input_ids.numel()
