"""A chat backend that streams from any OpenAI-compatible server (``vllm serve``, or any other).

The UI keeps its features (streaming, Stop, retry, images, history) while the
model runs elsewhere, batched and sharded as that server likes. Messages go out
through the ``openai`` client as streamed chat completions; images as ``data:``
URLs in ``image_url`` parts, in the place the UI's role/content messages put
them, so a server using YuRen's chat template renders what
:func:`yuren_core.chatml.render` would. Stop closes the HTTP stream, which makes
vLLM abort the request.

History is fitted to the context as the local backend fits it, with the
server counting the tokens: vLLM's ``POST /tokenize`` renders chat messages
(images expanded) through the served chat template. A server without that
endpoint gets the whole history, and refuses it once it outgrows the context;
:attr:`OpenAIBackend.cannot_count_tokens` says why. That endpoint is no part of
OpenAI's API: it is posted with the client's own ``post``, so key, timeout and
errors are the same as for the chat.
"""

from __future__ import annotations

import base64
import contextlib
import io
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import openai
from PIL import Image

from .backend import GenerationParams, PromptTooLong, drop_oldest_to_fit, split_system

# Used when the server does not say (vLLM reports max_model_len in /v1/models).
DEFAULT_CONTEXT_LENGTH = 4096

# The key sent to a server that asks for none (vLLM's documented stand-in): the client insists on one, and would
# otherwise take OPENAI_API_KEY from the environment and hand the user's OpenAI key to whatever server this is.
NO_API_KEY = "EMPTY"

# Headers the client fills from the environment (OPENAI_ORG_ID, OPENAI_PROJECT_ID): the user's OpenAI account is
# none of this server's business, so they are left out.
ACCOUNT_HEADERS = {"OpenAI-Organization": openai.omit, "OpenAI-Project": openai.omit}


class ServerError(RuntimeError):
    """The server refused or failed a request; the message carries its status and what it said."""


@contextlib.contextmanager
def server_errors() -> Iterator[None]:
    """Within the block, the ``openai`` client's errors become :class:`ServerError`, naming the URL and status."""
    try:
        yield
    except openai.APIStatusError as error:
        body = error.body
        message = body.get("message") if isinstance(body, Mapping) else None
        detail = message if isinstance(message, str) and message else error.response.text
        raise ServerError(f"{error.request.url} answered {error.status_code}: {detail[:500]}") from error
    except openai.APIConnectionError as error:
        cause = error.__cause__ or error
        raise ServerError(f"cannot connect to {error.request.url}: {cause}") from error
    except openai.APIError as error:  # an error event in the middle of a streamed answer
        raise ServerError(f"the server failed while answering: {error.message}") from error


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
    HTTP request. Failures are not retried: the UI's Retry is the user's to press.
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
        self.client = openai.OpenAI(
            base_url=api_base.rstrip("/"),
            api_key=api_key or NO_API_KEY,
            default_headers=ACCOUNT_HEADERS,
            timeout=timeout,
            max_retries=0,
        )
        listed = None if model and context_length else self._first_model()
        self.model = model or listed.id
        # max_model_len is vLLM's, beyond OpenAI's fields; the client keeps such fields in model_extra.
        server_length = (listed.model_extra or {}).get("max_model_len") if listed else None
        self._context_length = context_length or server_length or DEFAULT_CONTEXT_LENGTH
        self.tokenize_url = tokenize_url(api_base)
        self.cannot_count_tokens = self._probe_token_count()

    def _probe_token_count(self) -> str | None:
        """``None`` when the server counts chat tokens at :attr:`tokenize_url`, else why it does not."""
        try:
            self.count_tokens([{"role": "user", "content": "hello"}], [])
        except (ServerError, ValueError, KeyError, TypeError) as error:
            return f"it does not count chat tokens at POST {self.tokenize_url} ({str(error)[:200] or type(error).__name__})"
        return None

    def _first_model(self) -> openai.types.Model:
        with server_errors():
            models = self.client.models.list().data
        if not models:
            raise ServerError(f"{self.client.base_url}models lists no model to talk to")
        return models[0]

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
        with server_errors():
            count = self.client.post(self.tokenize_url, cast_to=dict, body=body)["count"]
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

    def completion_arguments(
        self, messages: Sequence[Mapping], images: Sequence[str], params: GenerationParams
    ) -> dict[str, Any]:
        """The ``chat.completions.create`` arguments for ``messages`` with ``params`` (streamed)."""
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(messages, images),
            "stream": True,
            "max_tokens": int(params.max_new_tokens),
            "temperature": float(params.temperature),
            # Not in OpenAI's API; vLLM and most self-hosted servers read it, OpenAI's own rejects it.
            "extra_body": {"repetition_penalty": float(params.repetition_penalty)},
        }
        if not params.greedy:
            arguments["top_p"] = float(params.top_p)
        return arguments

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
        arguments = self.completion_arguments(messages, images, params)
        with server_errors():
            # Leaving the block closes the stream, on Stop too: the server sees the client hang up and aborts.
            with self.client.chat.completions.create(**arguments) as chunks:
                for chunk in chunks:
                    if stop_event.is_set():
                        return
                    for choice in chunk.choices:
                        if choice.delta and choice.delta.content:
                            yield choice.delta.content

    def close(self) -> None:
        self.client.close()
