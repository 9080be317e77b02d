"""Greedy answers of a YuRen model to questions about images, and the zeroed-image control.

Run inside :func:`zeroed_image_features`, the same questions show what the
model gets right without seeing the images: on a question whose answer is only
in the image that falls to chance.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from yuren_core.chatml import ChatEncoder, render, to_messages, with_images_placed
from yuren_core.vision import ImageProcessor


@dataclass(frozen=True)
class Prompt:
    """A conversation ending with a user turn, and the image files its image markers stand for, in order."""

    conversation: Sequence[Mapping]
    images: Sequence[Path]


def user_turn(question: str, image_count: int = 1) -> dict:
    """A user turn asking ``question`` about images: the images first, each on its own line, then the text.

    This is where the image block goes relative to the question; it is the
    layout of the LLaVA-format training data and of the web UI's turns.
    """
    # One text piece per line break, as the renderer splits "<image>\n<image>\nquestion": same text, same tokens.
    parts: list[dict] = []
    for i in range(image_count):
        parts.append({"type": "image"})
        parts.append({"type": "text", "text": "\n" + (question if i == image_count - 1 else "")})
    if not image_count:
        parts.append({"type": "text", "text": question})
    return {"role": "user", "content": parts}


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
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    progress: str | None = None,
) -> list[str]:
    """Each prompt's greedy answer (decoded, special tokens dropped), in prompt order.

    Prompts of equal length are batched together, so no padding is needed.
    ``progress`` names a progress bar (none without it).
    """
    encoder = ChatEncoder(tokenizer)
    # The images go where the model's training put them (its config's image_position), whatever the prompt's layout.
    rendered = [
        render(
            encoder,
            with_images_placed(to_messages(p.conversation), model.config.image_position),
            image_seq_len=model.config.image_seq_len,
            add_generation_prompt=True,
        )
        for p in prompts
    ]
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, prompt in enumerate(rendered):
        by_length[len(prompt.input_ids)].append(index)
    answers: dict[int, str] = {}
    # The assistant's turn ends at <|im_end|>; the eos after it only closes training examples.
    stop = [encoder.ids.im_end, encoder.ids.eos]
    with tqdm(total=len(prompts), desc=progress, disable=progress is None) as bar:
        for group in by_length.values():
            for start in range(0, len(group), batch_size):
                batch = group[start : start + batch_size]
                input_ids = torch.tensor([rendered[i].input_ids for i in batch], device=model.device)
                files = [file for i in batch for file in prompts[i].images]
                pixel_values = processor(files).to(model.device) if files else None
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    pixel_values=pixel_values,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=stop,
                )
                for i, row in zip(batch, output[:, input_ids.shape[1] :], strict=True):
                    answers[i] = tokenizer.decode(row, skip_special_tokens=True)
                bar.update(len(batch))
    return [answers[i] for i in range(len(prompts))]
