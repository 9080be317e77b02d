"""Exact-match evaluation of a YuRen model on LLaVA-format records, and the zeroed-image control.

A record's last turn is the expected answer; the turns before it are the
prompt. The model answers greedily and is right when its answer, stripped of
surrounding whitespace, equals the expected one. Run once more inside
:func:`zeroed_image_features` the same evaluation shows what the model gets
right without seeing the images: on a question whose answer is only in the
image that falls to chance.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from yuren_core.chatml import render
from yuren_core.vision import ImageProcessor

from .data import image_paths
from .images import FolderImageLoader


@dataclass(frozen=True)
class Answer:
    """One record's expected and generated answers."""

    record_id: str
    expected: str
    generated: str

    @property
    def correct(self) -> bool:
        return self.generated.strip() == self.expected.strip()


@contextmanager
def zeroed_image_features(model) -> Iterator[None]:
    """Within the block, the projector outputs zeros: the language model gets no information from images."""
    handle = model.mm_projector.register_forward_hook(lambda module, inputs, output: torch.zeros_like(output))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def greedy_answers(
    model,
    tokenizer,
    processor: ImageProcessor,
    records: Sequence[Mapping],
    image_folder: str | os.PathLike,
    *,
    max_new_tokens: int = 16,
    batch_size: int = 32,
) -> list[Answer]:
    """Answer each record's prompt greedily; return the answers in record order.

    Prompts of equal length are batched together, so no padding is needed.
    """
    loader = FolderImageLoader(processor, image_folder)
    prompts = []
    for index, record in enumerate(records):
        turns = record["conversations"]
        prompt = render(tokenizer, turns[:-1], image_seq_len=model.config.image_seq_len, add_generation_prompt=True)
        prompts.append((index, prompt.input_ids, list(image_paths(f"record {index}", record))))

    by_length = defaultdict(list)
    for prompt in prompts:
        by_length[len(prompt[1])].append(prompt)
    generated: dict[int, str] = {}
    device = model.device
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            input_ids = torch.tensor([ids for _, ids, _ in batch], device=device)
            paths = [path for _, _, images in batch for path in images]
            pixel_values = loader(paths).to(device) if paths else None
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=pixel_values,
                max_new_tokens=max_new_tokens,
                do_sample=False,
            )
            for (index, _, _), row in zip(batch, output[:, input_ids.shape[1] :], strict=True):
                generated[index] = tokenizer.decode(row, skip_special_tokens=True)
    return [
        Answer(str(record.get("id", index)), record["conversations"][-1]["value"], generated[index])
        for index, record in enumerate(records)
    ]


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
    if zero_image_features:
        with zeroed_image_features(model):
            answers = greedy_answers(model, tokenizer, processor, records, image_folder)
    else:
        answers = greedy_answers(model, tokenizer, processor, records, image_folder)
    return sum(answer.correct for answer in answers) / len(answers)
