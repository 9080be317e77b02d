"""The real chat backend: a YuRen model decoding in the caller's thread, streamed as text.

Prompts are rendered only by :func:`yuren_core.chatml.render` in
generation-prompt mode, so the model sees history exactly as training rendered
it. Tokens come from :class:`yuren_core.decoding.Decoder` (a lean loop over the
model and its KV cache, sampling as ``generate`` does) one step per yield, so
the request's stop event, checked before every step, ends the answer at once,
and so does closing the stream.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

import torch
from PIL import Image

from yuren_core.chatml import render
from yuren_core.decoding import Decoder, TextDeltas
from yuren_core.vocab import special_ids

from .backend import (
    GenerationParams,
    ImagesNotSupported,
    PromptTooLong,
    drop_oldest_to_fit,
    is_out_of_memory,
    split_system,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt that fits the context, and what was left out to make it fit."""

    input_ids: list[int]
    images: list[Any]
    dropped_turns: int


class ModelBackend:
    """Serve a loaded model (``model``, ``tokenizer``, ``image_processor``) as a :class:`~webui.backend.ChatBackend`.

    ``image_processor`` is ``None`` for a text-only model. ``context_length``
    defaults to the model's ``max_position_embeddings``. Generations run one at
    a time: a second request waits for the first to finish. ``compile``
    decodes with a static KV cache and a compiled step (see
    :class:`~yuren_core.decoding.Decoder`).
    """

    def __init__(
        self,
        model,
        tokenizer,
        image_processor=None,
        *,
        context_length: int | None = None,
        compile: bool = False,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_seq_len = getattr(model.config, "image_seq_len", None)
        # A text-only model's config has no image_position; it takes no images, so the default never applies.
        self.image_position = getattr(model.config, "image_position", "before_text")
        self._context_length = context_length or model.config.max_position_embeddings
        ids = special_ids(tokenizer)
        # The assistant's turn ends at <|im_end|>; the eos after it is only there in training data.
        self.eos_token_id = [ids.im_end, ids.eos]
        self.pad_token_id = ids.pad
        self._generate_lock = threading.Lock()
        self.decoder = Decoder(model, compile=compile, max_cache_len=self._context_length)

    @classmethod
    def from_pretrained(
        cls,
        path: str | PathLike,
        *,
        load_8bit: bool = False,
        load_4bit: bool = False,
        device_map: str | dict | None = None,
        compile: bool = False,
    ) -> ModelBackend:
        """Load a YuRen checkpoint (directory or hub id) with :func:`yuren_core.loading.load_model`."""
        from yuren_core.loading import load_model

        if device_map is None and torch.cuda.is_available():
            device_map = "auto"
        model, tokenizer, image_processor = load_model(
            path, load_8bit=load_8bit, load_4bit=load_4bit, device_map=device_map
        )
        return cls(model, tokenizer, image_processor, compile=compile)

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def supports_images(self) -> bool:
        return self.image_processor is not None and self.image_seq_len is not None

    def prepare_image(self, image: Image.Image) -> torch.Tensor:
        """Preprocess one image to ``[3, H, W]`` pixel values, once, when it is uploaded."""
        if not self.supports_images:
            raise ImagesNotSupported("the loaded model reads text only")
        return self.image_processor.preprocess(image)

    def _fit(self, system: list, turns: list, starts: list[int], budget: int):
        """Render ``system`` + ``turns`` leaving out the fewest oldest user turns to fit ``budget`` tokens."""

        def from_turn(first: int):
            return render(
                self.tokenizer,
                system + turns[starts[first] :],
                image_seq_len=self.image_seq_len,
                add_generation_prompt=True,
            )

        return drop_oldest_to_fit(from_turn, lambda rendered: len(rendered.input_ids), len(starts), budget)

    def build_prompt(self, messages: Sequence[Mapping], images: Sequence[Any], max_new_tokens: int) -> Prompt:
        """Render ``messages`` leaving room for ``max_new_tokens``, dropping the oldest turns if needed.

        A leading system message is always kept; turns are dropped from the
        front a whole user turn (with its images and the answer to it) at a
        time. Raises :class:`~webui.backend.PromptTooLong` when even the system
        prompt plus the last user turn does not fit.
        """
        system, turns, starts = split_system(messages)
        budget = self.context_length - max_new_tokens
        fitted, dropped = self._fit(system, turns, starts, budget)
        if len(fitted.input_ids) > budget:
            raise PromptTooLong(len(fitted.input_ids), max_new_tokens, self.context_length)
        if dropped:
            logger.info("left out the %d oldest turns to fit the %d-token context", dropped, self.context_length)
        elif fitted.num_images != len(images):
            raise ValueError(f"the messages place {fitted.num_images} images but {len(images)} were given")
        kept_images = list(images[len(images) - fitted.num_images :]) if fitted.num_images else []
        return Prompt(input_ids=fitted.input_ids, images=kept_images, dropped_turns=dropped)

    def unreachable_turns(self, messages: Sequence[Mapping], images: Sequence[Any]) -> int:
        """See :meth:`webui.backend.ChatBackend.unreachable_turns`: fitted with no system prompt, one answer token."""
        _, turns, starts = split_system(messages)
        _, dropped = self._fit([], turns, starts, self.context_length - 1)
        return dropped

    def stream(
        self,
        messages: Sequence[Mapping],
        images: Sequence[Any],
        params: GenerationParams,
        stop_event: threading.Event,
    ) -> Iterator[str]:
        """Yield the answer to ``messages`` as it is generated; see :meth:`webui.backend.ChatBackend.stream`.

        Decoding runs in the consumer's thread, a token per step between two
        yields: no worker thread to hand tokens over or to end. One answer is
        generated at a time; another request waits for the lock.
        """
        prompt = self.build_prompt(messages, images, params.max_new_tokens)
        pixel_values = torch.stack(prompt.images).to(self.model.device) if prompt.images else None
        with self._generate_lock:
            try:
                tokens = self.decoder.tokens(
                    prompt.input_ids,
                    pixel_values=pixel_values,
                    max_new_tokens=int(params.max_new_tokens),
                    temperature=float(params.temperature),
                    top_p=float(params.top_p),
                    repetition_penalty=float(params.repetition_penalty),
                    stop_ids=self.eos_token_id,
                    should_stop=stop_event.is_set,
                )
                text = TextDeltas(self.tokenizer)
                for token in tokens:
                    piece = text.add(token)
                    if piece:
                        yield piece
                rest = text.flush()
                if rest:
                    yield rest
            except BaseException as error:
                if is_out_of_memory(error) and torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise
