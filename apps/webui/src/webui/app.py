"""The chat UI: Gradio Blocks around a :class:`~webui.backend.ChatBackend`.

:func:`build_app` lays out the page and wires its events to a
:class:`ChatController`, whose methods are plain Python (testable without a
server). Per-user state lives in a ``gr.State`` holding a
:class:`~webui.session.ChatSession`. Generation events share one concurrency
group of size 1, so the model answers one request at a time and the rest wait
in Gradio's bounded queue (a full queue answers "busy").

API names (for ``gradio_client``): ``/chat``, ``/retry``, ``/stop``,
``/delete_last``, ``/new_conversation``.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from .backend import (
    MAX_NEW_TOKENS_RANGE,
    REPETITION_PENALTY_RANGE,
    TEMPERATURE_RANGE,
    TOP_P_RANGE,
    ChatBackend,
    GenerationParams,
    ImagesNotSupported,
    PromptTooLong,
    is_out_of_memory,
)
from .labels import Labels, labels_for
from .session import Attachment, ChatSession, Exchange
from .uploads import ACCEPTED_EXTENSIONS, ACCEPTED_FORMATS, ImageRejected, open_upload

logger = logging.getLogger(__name__)

GENERATE = "generate"  # the concurrency group every model call joins


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server; enforced server-side, whatever the browser does."""

    max_text_chars: int = 4000
    max_system_chars: int = 4000
    max_images_per_message: int = 4
    max_images_per_conversation: int = 16
    # 40 megapixels: any phone photo passes; a decompression bomb does not.
    max_image_pixels: int = 40_000_000
    max_file_size: str = "20mb"
    # Requests waiting for the model beyond the one running; more get "busy".
    queue_size: int = 16


class ChatController:
    """The event handlers, over one backend, in one language, under ``limits``."""

    def __init__(self, backend: ChatBackend, labels: Labels, limits: Limits):
        self.backend = backend
        self.labels = labels
        self.limits = limits

    def error(self, message: str) -> gr.Error:
        return gr.Error(message, title=self.labels.error_title, print_exception=False)

    def params(self, top_p, temperature, max_new_tokens, repetition_penalty) -> GenerationParams:
        try:
            return GenerationParams(
                max_new_tokens=int(max_new_tokens),
                temperature=float(temperature),
                top_p=float(top_p),
                repetition_penalty=float(repetition_penalty),
            )
        except (TypeError, ValueError) as error:
            raise self.error(self.labels.invalid_settings.format(detail=html.escape(str(error)))) from None

    def check_system_prompt(self, system_prompt: str | None) -> str:
        system_prompt = system_prompt or ""
        if len(system_prompt) > self.limits.max_system_chars:
            raise self.error(
                self.labels.system_too_long.format(length=len(system_prompt), limit=self.limits.max_system_chars)
            )
        return system_prompt

    def attach(self, paths: list[str], session: ChatSession) -> list[Attachment]:
        """Check and prepare uploaded images, or raise a ``gr.Error`` saying what is wrong with which."""
        labels, limits = self.labels, self.limits
        if not paths:
            return []
        if not self.backend.supports_images:
            raise self.error(labels.images_not_supported)
        if len(paths) > limits.max_images_per_message:
            raise self.error(labels.too_many_images_message.format(limit=limits.max_images_per_message))
        if session.num_images + len(paths) > limits.max_images_per_conversation:
            raise self.error(labels.too_many_images_conversation.format(limit=limits.max_images_per_conversation))
        attachments = []
        for path in paths:
            try:
                image = open_upload(path, max_pixels=limits.max_image_pixels, formats=ACCEPTED_FORMATS)
                prepared = self.backend.prepare_image(image)
            except ImageRejected as rejected:
                template = {
                    "too_large": labels.image_too_large,
                    "far_too_large": labels.image_far_too_large,
                    "format": labels.image_format,
                }.get(rejected.reason, labels.image_unreadable)
                raise self.error(template.format(name=html.escape(rejected.name), **rejected.details)) from None
            except ImagesNotSupported:
                raise self.error(labels.images_not_supported) from None
            except Exception as error:  # the processor choking on a decodable image: still the upload's fault
                logger.warning("could not preprocess upload %s: %s", path, error)
                raise self.error(labels.image_unreadable.format(name=html.escape(Path(path).name))) from None
            attachments.append(Attachment(path=path, prepared=prepared))
        return attachments

    def chat(
        self,
        message: dict | None,
        session: ChatSession,
        system_prompt: str,
        top_p: float,
        temperature: float,
        max_new_tokens: int,
        repetition_penalty: float,
    ) -> Iterator[tuple[list[dict], dict | None]]:
        """Add the user's message (text and images) to the conversation and stream the answer.

        Yields (chat display, message box); the box is emptied once the
        message is accepted, and given back if the model cannot take it.
        """
        message = message or {}
        text = message.get("text") or ""
        files = list(message.get("files") or [])
        if not text.strip() and not files:
            raise self.error(self.labels.empty_message)
        if len(text) > self.limits.max_text_chars:
            raise self.error(self.labels.text_too_long.format(length=len(text), limit=self.limits.max_text_chars))
        system_prompt = self.check_system_prompt(system_prompt)
        params = self.params(top_p, temperature, max_new_tokens, repetition_penalty)
        exchange = Exchange(text=text, attachments=self.attach(files, session))
        session.exchanges.append(exchange)
        try:
            for display in self.answer(session, exchange, system_prompt, params):
                yield display, None
        except PromptTooLong as error:
            # Nothing was generated: take the turn back out and return the user's message to the box.
            if exchange in session.exchanges:
                session.exchanges.remove(exchange)
            yield session.display(), {"text": text, "files": files}
            raise self.too_long(error) from None

    def retry(
        self,
        session: ChatSession,
        system_prompt: str,
        top_p: float,
        temperature: float,
        max_new_tokens: int,
        repetition_penalty: float,
    ) -> Iterator[list[dict]]:
        """Answer the last user turn again (with the current settings and system prompt)."""
        if not session.exchanges:
            raise self.error(self.labels.nothing_to_retry)
        system_prompt = self.check_system_prompt(system_prompt)
        params = self.params(top_p, temperature, max_new_tokens, repetition_penalty)
        try:
            yield from self.answer(session, session.exchanges[-1], system_prompt, params)
        except PromptTooLong as error:
            raise self.too_long(error) from None

    def too_long(self, error: PromptTooLong) -> gr.Error:
        return self.error(
            self.labels.prompt_too_long.format(
                prompt_tokens=error.prompt_tokens,
                max_new_tokens=error.max_new_tokens,
                context_length=error.context_length,
            )
        )

    def answer(
        self, session: ChatSession, exchange: Exchange, system_prompt: str, params: GenerationParams
    ) -> Iterator[list[dict]]:
        """Stream the backend's answer into ``exchange``, yielding the chat display as it grows.

        :class:`~webui.backend.PromptTooLong` propagates (the caller decides
        what happens to the turn); other failures become a ``gr.Error``.
        """
        generation, stop_event = session.begin()
        exchange.answer = ""
        yield session.display()
        messages, images = session.conversation(system_prompt)
        pieces = self.backend.stream(messages, images, params, stop_event)
        try:
            for piece in pieces:
                if not session.current(generation):
                    break  # deleted or replaced meanwhile: write nothing more
                exchange.answer += piece
                yield session.display()
        except PromptTooLong:
            raise
        except Exception as error:
            if is_out_of_memory(error):
                logger.warning("out of memory while generating: %s", error)
                raise self.error(self.labels.out_of_memory) from None
            logger.exception("generation failed")
            name = html.escape(type(error).__name__)
            raise self.error(self.labels.generation_failed.format(error=name)) from None
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # ends the generation thread if we stopped reading early
        yield session.display()

    def stop(self, session: ChatSession) -> None:
        """Stop this user's running generation (nobody else's)."""
        session.stop()

    def delete_last(self, session: ChatSession) -> list[dict]:
        """Remove the last exchange (stopping its generation if it is still running)."""
        session.delete_last()
        return session.display()

    def new_conversation(self, session: ChatSession) -> list[dict]:
        """Forget the conversation (stopping its generation if one is running)."""
        session.clear()
        return session.display()


def new_session() -> ChatSession:
    """A fresh, empty conversation (the ``gr.State`` factory)."""
    return ChatSession()


def build_app(
    backend: ChatBackend,
    *,
    lang: str = "zh",
    limits: Limits = Limits(),
    defaults: GenerationParams | None = None,
    model_name: str = "",
    demo: bool = False,
) -> gr.Blocks:
    """Build the chat UI for ``backend``; launch it with :func:`webui.server.serve`.

    ``demo`` marks the built-in demo model: the page then says plainly that it
    is a small demo model. ``model_name`` is shown under the title; ``defaults``
    are the sliders' initial values (default: :class:`GenerationParams`'s).
    """
    defaults = defaults or GenerationParams()
    labels = labels_for(lang)
    controller = ChatController(backend, labels, limits)
    with gr.Blocks(title=labels.title, analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as app:
        # A factory, not an instance: every browser session gets a fresh ChatSession.
        session = gr.State(new_session)
        gr.Markdown(f"# {labels.title}\n{labels.intro}", elem_id="intro")
        if demo:
            gr.Markdown(labels.demo_banner, elem_id="demo-banner")
        if model_name:
            gr.Markdown(labels.model_line.format(name=model_name), elem_id="model-name")
        with gr.Row():
            with gr.Column(scale=4):
                chatbot = gr.Chatbot(
                    label=labels.chatbot,
                    elem_id="chatbot",
                    height=520,
                    render_markdown=True,
                    sanitize_html=True,
                    allow_tags=False,
                    feedback_options=None,
                    buttons=["copy"],
                    latex_delimiters=[],
                )
                message = gr.MultimodalTextbox(
                    elem_id="message",
                    placeholder=labels.placeholder,
                    show_label=False,
                    file_types=list(ACCEPTED_EXTENSIONS) if backend.supports_images else None,
                    file_count="multiple",
                    sources=["upload"] if backend.supports_images else [],
                    max_lines=12,
                    autofocus=True,
                )
                with gr.Row():
                    stop = gr.Button(labels.stop, elem_id="stop", variant="stop")
                    retry = gr.Button(labels.retry, elem_id="retry")
                    delete_last = gr.Button(labels.delete_last, elem_id="delete-last")
                    new_conversation = gr.Button(labels.new_conversation, elem_id="new-conversation")
            with gr.Column(scale=2):
                system_prompt = gr.Textbox(
                    value=labels.default_system_prompt,  # called on every page load: today's date
                    label=labels.system_prompt,
                    elem_id="system-prompt",
                    lines=6,
                    max_lines=16,
                )
                with gr.Accordion(labels.settings, open=True):
                    temperature = gr.Slider(
                        *TEMPERATURE_RANGE,
                        value=defaults.temperature,
                        step=0.05,
                        label=labels.temperature,
                        info=labels.temperature_info,
                        elem_id="temperature",
                    )
                    top_p = gr.Slider(
                        *TOP_P_RANGE,
                        value=defaults.top_p,
                        step=0.01,
                        label=labels.top_p,
                        info=labels.top_p_info,
                        elem_id="top-p",
                    )
                    max_new_tokens = gr.Slider(
                        *MAX_NEW_TOKENS_RANGE,
                        value=defaults.max_new_tokens,
                        step=1,
                        label=labels.max_new_tokens,
                        elem_id="max-new-tokens",
                    )
                    repetition_penalty = gr.Slider(
                        *REPETITION_PENALTY_RANGE,
                        value=defaults.repetition_penalty,
                        step=0.01,
                        label=labels.repetition_penalty,
                        elem_id="repetition-penalty",
                    )

        settings = [system_prompt, top_p, temperature, max_new_tokens, repetition_penalty]
        generating = {"concurrency_limit": 1, "concurrency_id": GENERATE, "show_progress": "minimal"}
        chat_event = message.submit(
            controller.chat, [message, session, *settings], [chatbot, message], api_name="chat", **generating
        )
        retry_event = retry.click(controller.retry, [session, *settings], [chatbot], api_name="retry", **generating)
        running = [chat_event, retry_event]
        # Light events skip the queue, so Stop works even when the queue is full.
        stop.click(controller.stop, [session], None, api_name="stop", queue=False, cancels=running)
        delete_last.click(
            controller.delete_last, [session], [chatbot], api_name="delete_last", queue=False, cancels=running
        )
        new_conversation.click(
            controller.new_conversation, [session], [chatbot], api_name="new_conversation", queue=False, cancels=running
        )
        # The chat window's own trash button must clear the conversation too, not just the display.
        chatbot.clear(
            controller.new_conversation, [session], [chatbot], api_visibility="private", queue=False, cancels=running
        )
    # api_open=False: direct POSTs to /run/<api_name> would skip the queue and its concurrency limit.
    app.queue(max_size=limits.queue_size, api_open=False, default_concurrency_limit=1)
    return app
