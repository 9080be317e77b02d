"""The real chat backend: a YuRen model decoding on its own compute thread, streamed as text.

Prompts are rendered only by :func:`yuren_core.chatml.render` in
generation-prompt mode, so the model sees history exactly as training rendered
it. Tokens come from :class:`yuren_core.decoding.Decoder` (a loop over the
model and a transformers KV cache, sampling as ``generate`` does), which checks the
request's stop event before every step. All tensor work (loading, image
preprocessing, decoding) runs on one :class:`~webui.compute.ComputeThread`,
whichever of Gradio's threads asks for it (the module says why); the answer's
text reaches the caller as it is decoded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from os import PathLike
from typing import Any

import torch
from PIL import Image

from yuren_core.chatml import ChatEncoder, render
from yuren_core.decoding import Decoder, TextDeltas

from .backend import (
    GenerationParams,
    ImagesNotSupported,
    PromptTooLong,
    drop_oldest_to_fit,
    is_out_of_memory,
    split_system,
)
from .compute import ComputeThread

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
    a time on ``compute`` (a new :class:`~webui.compute.ComputeThread` by
    default): a second request waits for the first to finish. For full speed on
    a CPU the model should have been loaded on that thread too, as
    :meth:`from_pretrained` does. ``compile`` decodes with a static KV cache
    and a compiled step (see :class:`~yuren_core.decoding.Decoder`).
    """

    def __init__(
        self,
        model,
        tokenizer,
        image_processor=None,
        *,
        context_length: int | None = None,
        compile: bool = False,
        compute: ComputeThread | None = None,
    ):
        self.model = model
        self.compute = compute or ComputeThread()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_seq_len = getattr(model.config, "image_seq_len", None)
        # A text-only model's config has no image_position; it takes no images, so the default never applies.
        self.image_position = getattr(model.config, "image_position", "before_text")
        self._context_length = context_length or model.config.max_position_embeddings
        # Built once: every prompt renders through it (see ChatEncoder).
        self.chat_encoder = ChatEncoder(tokenizer)
        ids = self.chat_encoder.ids
        # The assistant's turn ends at <|im_end|>; the eos after it is only there in training data.
        self.eos_token_id = [ids.im_end, ids.eos]
        self.pad_token_id = ids.pad
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
        threads: int | None = None,
    ) -> ModelBackend:
        """Load a YuRen checkpoint (directory or hub id) with :func:`yuren_core.loading.load_model`.

        The model is loaded on the backend's compute thread, which then does all
        its work; ``threads`` sets torch's CPU threads (default: torch's own choice).
        """
        from yuren_core.loading import load_model

        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if device_map is None and torch.cuda.is_available():
            device_map = "auto"
        compute = ComputeThread()
        if threads is not None:
            compute.call(torch.set_num_threads, threads)
        model, tokenizer, image_processor = compute.call(
            load_model, path, load_8bit=load_8bit, load_4bit=load_4bit, device_map=device_map
        )
        return cls(model, tokenizer, image_processor, compile=compile, compute=compute)

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
        return self.compute.call(self.image_processor.preprocess, image)

    def _fit(self, system: list, turns: list, starts: list[int], budget: int):
        """Render ``system`` + ``turns`` leaving out the fewest oldest user turns to fit ``budget`` tokens."""

        def from_turn(first: int):
            return render(
                self.chat_encoder,
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

        The prompt is rendered here (so a prompt that cannot fit fails at the
        first piece); decoding runs on the compute thread, after any answer
        already queued there, and stops before its next step once
        ``stop_event`` is set or this stream is closed. No piece is yielded
        after the stop.
        """
        prompt = self.build_prompt(messages, images, params.max_new_tokens)

        def answer(abandoned: Callable[[], bool]) -> Iterator[str]:
            return self._answer(prompt, params, lambda: stop_event.is_set() or abandoned())

        with closing(self.compute.stream(answer)) as pieces:
            for piece in pieces:
                if stop_event.is_set():
                    return
                yield piece

    def _answer(self, prompt: Prompt, params: GenerationParams, should_stop: Callable[[], bool]) -> Iterator[str]:
        """Decode the answer to ``prompt`` (on the compute thread), as text pieces."""
        try:
            pixel_values = torch.stack(prompt.images).to(self.model.device) if prompt.images else None
            tokens = self.decoder.tokens(
                prompt.input_ids,
                pixel_values=pixel_values,
                max_new_tokens=int(params.max_new_tokens),
                temperature=float(params.temperature),
                top_p=float(params.top_p),
                repetition_penalty=float(params.repetition_penalty),
                stop_ids=self.eos_token_id,
                should_stop=should_stop,
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
