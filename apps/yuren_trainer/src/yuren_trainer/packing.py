"""Sequence packing: several conversations per row, up to the length limit.

Packing only concatenates; keeping the conversations apart is the collator's
job (:class:`yuren_trainer.collator.PackedCollator` gives each conversation its
own position ids, from which the model builds a block-diagonal causal mask,
and drops the label of each conversation's first token, which would otherwise
be predicted from the conversation before it). Each packed row records its
conversations' lengths in ``seq_lengths``.
"""

from __future__ import annotations

import bisect


def assign_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins whose lengths sum to at most ``capacity`` (best-fit decreasing).

    Deterministic: ties are broken by index. Items are never split; an item
    longer than ``capacity`` is an error (truncate first).
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"item {too_long[0]} has length {lengths[too_long[0]]} > capacity {capacity}")
    bins: list[list[int]] = []
    # Sorted (free space, bin number) pairs: the first pair with enough room is the best fit.
    free: list[tuple[int, int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need = lengths[index]
        slot = bisect.bisect_left(free, (need, -1))
        if slot == len(free):
            bins.append([index])
            bin_number, room = len(bins) - 1, capacity - need
        else:
            room, bin_number = free.pop(slot)
            bins[bin_number].append(index)
            room -= need
        bisect.insort(free, (room, bin_number))
    # Keep the conversations of a row in file order, and rows in order of their first conversation.
    for members in bins:
        members.sort()
    bins.sort(key=lambda members: members[0])
    return bins


def pack_rows(columns: dict[str, list], max_length: int) -> dict[str, list]:
    """Pack tokenized conversations (``input_ids``, ``labels``, ``images``) into rows of at most ``max_length``."""
    packed: dict[str, list] = {"input_ids": [], "labels": [], "length": [], "images": [], "seq_lengths": []}
    for members in assign_bins([len(ids) for ids in columns["input_ids"]], max_length):
        input_ids: list[int] = []
        labels: list[int] = []
        images: list[str] = []
        for index in members:
            input_ids += columns["input_ids"][index]
            labels += columns["labels"][index]
            images += columns["images"][index]
        packed["input_ids"].append(input_ids)
        packed["labels"].append(labels)
        packed["length"].append(len(input_ids))
        packed["images"].append(images)
        packed["seq_lengths"].append([len(columns["input_ids"][i]) for i in members])
    return packed
