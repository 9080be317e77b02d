"""Exact-match accuracy of a YuRen model on LLaVA-format records, optionally with the image features zeroed.

A record's last turn is the expected answer; the turns before it are the
prompt. The model answers greedily and is right when its answer, stripped of
surrounding whitespace, equals the expected one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

from yuren_core.records import image_paths
from yuren_core.vision import ImageProcessor

from .answering import Prompt, greedy_answers, zeroed_image_features


def record_prompt(where: str, record: Mapping, image_folder: str | os.PathLike) -> Prompt:
    """The prompt of a LLaVA-format record: every turn but the last, and its images under ``image_folder``."""
    images = image_paths(where, record)
    return Prompt(record["conversations"][:-1], [Path(image_folder) / path for path in images])


def exact_match_accuracy(
    model,
    tokenizer,
    processor: ImageProcessor,
    records: Sequence[Mapping],
    image_folder: str | os.PathLike,
    *,
    zero_image_features: bool = False,
) -> float:
    """Share of ``records`` the model answers exactly right (greedy); optionally with the image features zeroed."""
    if not records:
        raise ValueError("no records to evaluate")
    prompts = [record_prompt(f"record {i}", record, image_folder) for i, record in enumerate(records)]
    with zeroed_image_features(model) if zero_image_features else nullcontext():
        answers = greedy_answers(model, tokenizer, processor, prompts)
    expected = [record["conversations"][-1]["value"].strip() for record in records]
    return sum(answer.strip() == truth for answer, truth in zip(answers, expected, strict=True)) / len(records)
