"""A chat backend that streams from any OpenAI-compatible server (``vllm serve``, or any other).

The UI keeps its features (streaming, Stop, retry, images, history) while the
model runs elsewhere, batched and sharded as that server likes. Messages go out
as ``/v1/chat/completions`` requests with ``stream: true``; images as ``data:``
URLs in ``image_url`` parts, in the place the UI's role/content messages put
them, so a server using YuRen's chat template renders what
:func:`yuren_core.chatml.render` would. Stop closes the HTTP stream, which makes
vLLM abort the request.

History is fitted to the context as the local backend fits it, with the
server counting the tokens: vLLM's ``POST /tokenize`` renders chat messages
(images expanded) through the served chat template. A server without that
endpoint gets the whole history, and refuses it once it outgrows the context;
:attr:`OpenAIBackend.cannot_count_tokens` says why.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx
from PIL import Image

from .backend import GenerationParams, PromptTooLong, drop_oldest_to_fit, split_system

# Used when the server does not say (vLLM reports max_model_len in /v1/models).
DEFAULT_CONTEXT_LENGTH = 4096


class ServerError(RuntimeError):
    """The server refused or failed a request; the message carries its status and what it said."""


def image_data_url(image: Image.Image) -> str:
    """A ``data:image/png;base64,...`` URL of ``image`` (lossless, so the server sees the pixels the user sent)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def tokenize_url(api_base: str) -> str:
    """Where vLLM counts tokens: ``/tokenize`` at the server's root, beside (not under) ``/v1``."""
    return api_base.rstrip("/").removesuffix("/v1") + "/tokenize"


def count_images(messages: Sequence[Mapping]) -> int:
    """How many ``{"type": "image"}`` parts ``messages`` hold."""
    return sum(
        1
        for message in messages
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") == "image"
    )


def openai_messages(messages: Sequence[Mapping], images: Sequence[str]) -> list[dict]:
    """The UI's role/content messages with each ``{"type": "image"}`` part replaced by the next image's URL."""
    urls = iter(images)
    converted = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    url = next(urls, None)
                    if url is None:
                        raise ValueError("the messages place more images than were given")
                    parts.append({"type": "image_url", "image_url": {"url": url}})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            content = parts
        converted.append({"role": message["role"], "content": content})
    if next(urls, None) is not None:
        raise ValueError("more images were given than the messages place")
    return converted


class OpenAIBackend:
    """A :class:`~webui.backend.ChatBackend` over an OpenAI-compatible server at ``api_base`` (ending in ``/v1``).

    ``model`` defaults to the first model the server lists. ``image_position``
    is the served checkpoint's (its config's ``image_position``): the UI places
    images by it, and the server's chat template keeps them where they are sent.
    Requests run concurrently (the server batches them); each is one streamed
    HTTP request.
    """

    def __init__(
        self,
        api_base: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        context_length: int | None = None,
        image_position: str = "before_text",
        timeout: float = 600.0,
    ):
        self.image_position = image_position
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=api_base.rstrip("/") + "/", headers=headers, timeout=timeout)
        listed = None if model and context_length else self._first_model()
        self.model = model or listed["id"]
        self._context_length = context_length or (listed or {}).get("max_model_len") or DEFAULT_CONTEXT_LENGTH
        self.tokenize_url = tokenize_url(api_base)
        self.cannot_count_tokens = self._probe_token_count()

    def _probe_token_count(self) -> str | None:
        """``None`` when the server counts chat tokens at :attr:`tokenize_url`, else why it does not."""
        try:
            self.count_tokens([{"role": "user", "content": "hello"}], [])
        except (ServerError, httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            return f"it does not count chat tokens at POST {self.tokenize_url} ({str(error)[:200] or type(error).__name__})"
        return None

    def _first_model(self) -> dict:
        response = self._checked(self.client.get("models"))
        models = response.json().get("data") or []
        if not models:
            raise ServerError(f"{self.client.base_url}models lists no model to talk to")
        return models[0]

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        response.read()
        try:
            detail = response.json().get("error", {}).get("message") or response.text
        except (ValueError, AttributeError):
            detail = response.text
        raise ServerError(f"{response.request.url} answered {response.status_code}: {detail[:500]}")

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def supports_images(self) -> bool:
        # Whether the served model reads images is the server's to say; a text-only one answers with an error.
        return True

    def prepare_image(self, image: Image.Image) -> str:
        """Encode an uploaded image once, as the ``data:`` URL every later request of the conversation sends."""
        return image_data_url(image)

    def count_tokens(self, messages: Sequence[Mapping], images: Sequence[str]) -> int:
        """Tokens of the prompt the server renders ``messages`` to (generation prompt and image blocks included)."""
        body = {"model": self.model, "messages": openai_messages(messages, images), "add_generation_prompt": True}
        count = self._checked(self.client.post(self.tokenize_url, json=body)).json()["count"]
        if not isinstance(count, int):
            raise ValueError(f"the token count is {count!r}, not a whole number")
        return count

    def _fit(self, messages: Sequence[Mapping], images: Sequence[str], budget: int):
        """``((messages, images, tokens), dropped)``: the fewest oldest user turns left out to fit ``budget``."""
        system, turns, starts = split_system(messages)
        in_system = count_images(system)

        def from_turn(first: int):
            kept = system + turns[starts[first] :]
            skipped = count_images(turns[: starts[first]])
            kept_images = list(images[:in_system]) + list(images[in_system + skipped :])
            return kept, kept_images, self.count_tokens(kept, kept_images)

        return drop_oldest_to_fit(from_turn, lambda built: built[2], len(starts), budget)

    def unreachable_turns(self, messages: Sequence[Mapping], images: Sequence[str]) -> int:
        """See :meth:`webui.backend.ChatBackend.unreachable_turns`: counted by the server, no system prompt.

        0 when the server cannot count tokens (:attr:`cannot_count_tokens`): the
        history is then sent whole, and the server refuses it once it is too long.
        """
        if self.cannot_count_tokens:
            return 0
        system, _, _ = split_system(messages)
        _, dropped = self._fit(messages[len(system) :], images[count_images(system) :], self.context_length - 1)
        return dropped

    def request_body(self, messages: Sequence[Mapping], images: Sequence[str], params: GenerationParams) -> dict:
        """The ``/v1/chat/completions`` body for ``messages`` with ``params`` (streaming)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(messages, images),
            "stream": True,
            "max_tokens": int(params.max_new_tokens),
            "temperature": float(params.temperature),
            # Not in OpenAI's API; vLLM and most self-hosted servers read it, OpenAI's own rejects it.
            "repetition_penalty": float(params.repetition_penalty),
        }
        if not params.greedy:
            body["top_p"] = float(params.top_p)
        return body

    def stream(
        self,
        messages: Sequence[Mapping],
        images: Sequence[str],
        params: GenerationParams,
        stop_event: threading.Event,
    ) -> Iterator[str]:
        """Yield the answer as the server streams it; setting ``stop_event`` closes the stream.

        The oldest turns are left out to leave ``max_new_tokens`` of the context
        for the answer, and :class:`~webui.backend.PromptTooLong` is raised when
        the newest turn alone does not fit (unless the server cannot count tokens).
        """
        if not self.cannot_count_tokens:
            budget = self.context_length - int(params.max_new_tokens)
            (messages, images, tokens), _ = self._fit(messages, images, budget)
            if tokens > budget:
                raise PromptTooLong(tokens, int(params.max_new_tokens), self.context_length)
        body = self.request_body(messages, images, params)
        with self.client.stream("POST", "chat/completions", json=body) as response:
            self._checked(response)
            for line in response.iter_lines():
                if stop_event.is_set():
                    return
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ServerError(f"the server failed while answering: {chunk['error']}")
                for choice in chunk.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece

    def close(self) -> None:
        self.client.close()
