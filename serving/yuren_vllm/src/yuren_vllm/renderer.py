"""Chats rendered by :func:`yuren_core.chatml.render`: the ids the model was trained on, typed text kept as text.

vLLM's default renderer writes the chat template's output as one string and
tokenizes it, so control tokens a user types (``<|im_end|><|im_start|>system``,
``<|img_patch|>``) become real control ids: a message could end its turn,
open a system turn, or fake an image block. :class:`YuRenRenderer` takes the
parsed messages (images as ``{"type": "image"}`` parts, loaded by vLLM as
before) and renders them to ids with the project's renderer, where special
tokens are only ever inserted as ids, so chat completions and ``/tokenize``
give exactly :func:`~yuren_core.chatml.render`'s ids. The plugin selects it for
YuRen checkpoints (``tokenizer_mode="yuren"``, see :mod:`yuren_vllm.config_defaults`).

Two ways a request's images failed with a server error (500 and a traceback)
are answered 400 here, before anything is read: a ``file:`` URL while the
operator allowed no folder (``--allowed-local-media-path``), and an image
whose pixel count Pillow refuses as a decompression bomb.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

from PIL import Image
from vllm.exceptions import VLLMValidationError
from vllm.inputs import TokensPrompt
from vllm.renderers.chat_utils import parse_chat_messages, parse_chat_messages_async
from vllm.renderers.hf import HfRenderer

from yuren_core.chatml import ChatEncoder, render


class YuRenRenderer(HfRenderer):
    """vLLM's Hugging Face renderer with chat messages rendered by :func:`yuren_core.chatml.render`."""

    def render_messages(self, messages, params):
        parse_kwargs = self._parse_kwargs(messages, params)
        with _oversized_images_refused():
            conversation, mm_data, mm_uuids = parse_chat_messages(messages, self.model_config, **parse_kwargs)
        return conversation, self._prompt(conversation, mm_data, mm_uuids)

    # vLLM's server calls this one, its offline LLM.chat the one above: both must refuse and render alike.
    async def render_messages_async(self, messages, params):
        parse_kwargs = self._parse_kwargs(messages, params)
        with _oversized_images_refused():
            conversation, mm_data, mm_uuids = await parse_chat_messages_async(
                messages, self.model_config, **parse_kwargs
            )
        return conversation, self._prompt(conversation, mm_data, mm_uuids)

    def _parse_kwargs(self, messages, params) -> dict:
        """Check the request (see :meth:`_check_request`); the keyword arguments vLLM's chat parsers take from it."""
        self._check_request(messages, params)
        return {
            "content_format": "openai",
            "media_io_kwargs": params.media_io_kwargs,
            "mm_processor_kwargs": params.mm_processor_kwargs,
        }

    def _check_request(self, messages, params) -> None:
        if params.chat_template is not None:
            raise VLLMValidationError(
                "YuRen renders chats with its own renderer (yuren_core.chatml.render); a chat template "
                "(--chat-template or the request's chat_template) is not used: leave it out",
                parameter="chat_template",
            )
        if not self.model_config.allowed_local_media_path and any(
            url.lower().startswith("file:") for url in _media_strings(messages)
        ):
            raise VLLMValidationError(
                "file: image URLs are off on this server (the operator allows a folder with "
                "--allowed-local-media-path); send the image as a data: URL",
                parameter="messages",
            )

    @cached_property
    def _chat_encoder(self) -> ChatEncoder:
        # Built at the first chat, not per request: it copies the tokenizer.
        return ChatEncoder(self.get_tokenizer())

    def _prompt(self, conversation, mm_data, mm_uuids) -> TokensPrompt:
        # Like the chat template, a user turn ends in the generation prompt and an assistant turn in
        # <|im_end|></s>, so the generation-prompt flag changes nothing and render is not asked to check it.
        rendered = render(self._chat_encoder, conversation, image_seq_len=self.model_config.hf_config.image_seq_len)
        prompt = TokensPrompt(prompt_token_ids=rendered.input_ids)
        if mm_data is not None:
            prompt["multi_modal_data"] = mm_data
        if mm_uuids is not None:
            prompt["multi_modal_uuids"] = mm_uuids
        return prompt


@contextmanager
def _oversized_images_refused() -> Iterator[None]:
    """Answer an image Pillow refuses as a decompression bomb with a 400 that says so, not a 500."""
    try:
        yield
    except Image.DecompressionBombError as error:
        raise VLLMValidationError(
            f"an image is larger than this server decodes ({error}); send a smaller image", parameter="messages"
        ) from None


def _media_strings(messages) -> Iterator[str]:
    """Every string inside the messages' non-text content parts (where vLLM finds media URLs, in any spelling)."""

    def strings(value) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") not in ("text", "refusal"):
                    yield from strings(part)
