"""The chat UI: Gradio Blocks around a :class:`~webui.backend.ChatBackend`.

:func:`build_app` lays out the page and wires its events to a
:class:`ChatController`, whose methods are plain Python (testable without a
server). Per-user state lives in a ``gr.State`` holding a
:class:`~webui.session.ChatSession`. Generation events share one concurrency
group of size 1, so the model answers one request at a time and the rest wait
in Gradio's bounded queue (a full queue answers "busy").

API names (for ``gradio_client``): ``/chat``, ``/retry``, ``/stop``,
``/delete_last``, ``/new_conversation``. Every handler's failure reaches the
caller as a ``gr.Error`` with a message (:func:`reported`); Stop, Delete last
and New conversation also take the session's waiting request out of the queue.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from .guard import cancel_waiting
from .labels import Labels, labels_for
from .server_limits import MAX_SESSIONS, UPLOAD_RATE, UPLOAD_STORAGE
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
    # One side more than this many times the other: too thin to show the model anything (None: no limit).
    max_aspect_ratio: float | None = 25
    max_file_size: str = "20mb"
    # Requests waiting for the model beyond the one running; more get "busy".
    queue_size: int = 16
    # Waiting requests one conversation, and one client address, may hold (None: no cap per address;
    # behind a reverse proxy every user shares the proxy's address).
    max_waiting_per_session: int = 1
    max_waiting_per_address: int | None = 4
    # Conversations kept in memory, the least recently used forgotten past it.
    max_sessions: int = MAX_SESSIONS
    # Bytes one client address may upload per minute, and all uploads together may keep on disk
    # (past it the oldest uploads are deleted).
    upload_rate: str = UPLOAD_RATE
    upload_storage: str = UPLOAD_STORAGE


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
        except (TypeError, ValueError, OverflowError) as error:
            raise self.error(self.labels.invalid_settings.format(detail=html.escape(str(error)))) from None

    def check_encodable(self, text: str, template: str) -> None:
        """Refuse text that cannot be encoded as UTF-8 (lone surrogates): the tokenizer and display would fail."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise self.error(template) from None

    def check_system_prompt(self, system_prompt: str | None) -> str:
        system_prompt = system_prompt or ""
        if not isinstance(system_prompt, str):
            raise self.error(self.labels.bad_input.format(detail="the system prompt must be a string"))
        if len(system_prompt) > self.limits.max_system_chars:
            raise self.error(
                self.labels.system_too_long.format(length=len(system_prompt), limit=self.limits.max_system_chars)
            )
        self.check_encodable(system_prompt, self.labels.system_unencodable)
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
                image = open_upload(
                    path,
                    max_pixels=limits.max_image_pixels,
                    max_aspect_ratio=limits.max_aspect_ratio,
                    formats=ACCEPTED_FORMATS,
                )
                prepared = self.backend.prepare_image(image)
            except ImageRejected as rejected:
                template = {
                    "too_large": labels.image_too_large,
                    "far_too_large": labels.image_far_too_large,
                    "format": labels.image_format,
                    "aspect": labels.image_aspect,
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
        if not isinstance(message, dict):
            raise self.error(self.labels.bad_input.format(detail="the message must be {text, files}"))
        text = message.get("text") or ""
        files = message.get("files") or []
        if not isinstance(text, str) or not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise self.error(self.labels.bad_input.format(detail="text must be a string and files a list of files"))
        if not text.strip() and not files:
            raise self.error(self.labels.empty_message)
        if len(text) > self.limits.max_text_chars:
            raise self.error(self.labels.text_too_long.format(length=len(text), limit=self.limits.max_text_chars))
        self.check_encodable(text, self.labels.text_unencodable)
        system_prompt = self.check_system_prompt(system_prompt)
        params = self.params(top_p, temperature, max_new_tokens, repetition_penalty)
        exchange = Exchange(text=text, attachments=self.attach(files, session))
        session.exchanges.append(exchange)
        try:
            for display in self.answer(session, exchange, system_prompt, params):
                yield display, None
        except Exception as error:
            if not exchange.answer and exchange in session.exchanges:
                # Nothing was generated: take the turn back out and return the user's message to the box,
                # so a failed turn never stays in the conversation to break every later answer.
                session.exchanges.remove(exchange)
                yield session.display(), {"text": text, "files": files}
            if isinstance(error, PromptTooLong):
                raise self.too_long(error) from None
            raise

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
        exchange = session.exchanges[-1]
        previous = exchange.answer
        try:
            yield from self.answer(session, exchange, system_prompt, params)
        except Exception as error:
            if not exchange.answer:
                exchange.answer = previous  # nothing new was generated: keep the answer there was
                yield session.display()
            if isinstance(error, PromptTooLong):
                raise self.too_long(error) from None
            raise

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
        messages, images = session.conversation(system_prompt, self.backend.image_position)
        unreachable = self.backend.unreachable_turns(messages, images)
        if unreachable:
            # They can never be in a prompt again: keeping them would only make every answer slower.
            session.drop_oldest(unreachable)
            session.notice = self.labels.turns_dropped.format(
                count=session.dropped_turns, context_length=self.backend.context_length
            )
            gr.Warning(session.notice)
            messages, images = session.conversation(system_prompt, self.backend.image_position)
            yield session.display()
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


def reported(handler: Callable, labels: Labels) -> Callable:
    """``handler`` whose unexpected failures reach the caller as a ``gr.Error`` naming the error type.

    Without this, Gradio (``show_error=False``) answers API callers an error with no message at all.
    """

    def internal(error: Exception) -> gr.Error:
        logger.exception("%s failed", getattr(handler, "__name__", "handler"))
        name = html.escape(type(error).__name__)
        return gr.Error(labels.internal_error.format(error=name), title=labels.error_title, print_exception=False)

    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def generator(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as error:
                raise internal(error) from None

        return generator
    if inspect.iscoroutinefunction(handler):

        @functools.wraps(handler)
        async def coroutine(*args, **kwargs):
            try:
                return await handler(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as error:
                raise internal(error) from None

        return coroutine

    @functools.wraps(handler)
    def function(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            raise internal(error) from None

    return function


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
        page_header(labels, model_name=model_name, demo=demo)
        with gr.Row():
            with gr.Column(scale=4):
                chat = chat_column(labels, supports_images=backend.supports_images)
            with gr.Column(scale=2):
                settings = settings_panel(labels, defaults)
        wire_events(app, controller, labels, session, chat, settings)
    # api_open=False: direct POSTs to /run/<api_name> would skip the queue and its concurrency limit.
    app.queue(max_size=limits.queue_size, api_open=False, default_concurrency_limit=1)
    return app


@dataclass(frozen=True)
class ChatColumn:
    """The conversation, the message box and the buttons under it."""

    chatbot: gr.Chatbot
    message: gr.MultimodalTextbox
    stop: gr.Button
    retry: gr.Button
    delete_last: gr.Button
    new_conversation: gr.Button


@dataclass(frozen=True)
class SettingsPanel:
    """The system prompt and the sampling sliders."""

    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Slider
    repetition_penalty: gr.Slider

    def inputs(self) -> list[gr.components.Component]:
        """The settings in the order :meth:`ChatController.chat` and ``retry`` take them."""
        return [self.system_prompt, self.top_p, self.temperature, self.max_new_tokens, self.repetition_penalty]


def page_header(labels: Labels, *, model_name: str, demo: bool) -> None:
    """Title and introduction, the demo model's notice, and the served model's name."""
    gr.Markdown(f"# {labels.title}\n{labels.intro}", elem_id="intro")
    if demo:
        gr.Markdown(labels.demo_banner, elem_id="demo-banner")
    if model_name:
        gr.Markdown(labels.model_line.format(name=model_name), elem_id="model-name")


def chat_column(labels: Labels, *, supports_images: bool) -> ChatColumn:
    """The chat window, the message box (accepting images when the backend does) and the buttons."""
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
        file_types=list(ACCEPTED_EXTENSIONS) if supports_images else None,
        file_count="multiple",
        sources=["upload"] if supports_images else [],
        max_lines=12,
        autofocus=True,
    )
    with gr.Row():
        return ChatColumn(
            chatbot=chatbot,
            message=message,
            stop=gr.Button(labels.stop, elem_id="stop", variant="stop"),
            retry=gr.Button(labels.retry, elem_id="retry"),
            delete_last=gr.Button(labels.delete_last, elem_id="delete-last"),
            new_conversation=gr.Button(labels.new_conversation, elem_id="new-conversation"),
        )


def slider(
    value_range: tuple[float, float], value: float, *, step: float, label: str, elem_id: str, info: str | None = None
) -> gr.Slider:
    """A slider over ``value_range`` (one of the backend's ``*_RANGE`` bounds) starting at ``value``."""
    return gr.Slider(*value_range, value=value, step=step, label=label, info=info, elem_id=elem_id)


def settings_panel(labels: Labels, defaults: GenerationParams) -> SettingsPanel:
    """The system prompt box and, in an open accordion, the sampling sliders at ``defaults``."""
    system_prompt = gr.Textbox(
        value=labels.default_system_prompt,  # called on every page load: today's date
        label=labels.system_prompt,
        elem_id="system-prompt",
        lines=6,
        max_lines=16,
    )
    with gr.Accordion(labels.settings, open=True):
        return SettingsPanel(
            system_prompt=system_prompt,
            temperature=slider(
                TEMPERATURE_RANGE,
                defaults.temperature,
                step=0.05,
                label=labels.temperature,
                info=labels.temperature_info,
                elem_id="temperature",
            ),
            top_p=slider(
                TOP_P_RANGE, defaults.top_p, step=0.01, label=labels.top_p, info=labels.top_p_info, elem_id="top-p"
            ),
            max_new_tokens=slider(
                MAX_NEW_TOKENS_RANGE,
                defaults.max_new_tokens,
                step=1,
                label=labels.max_new_tokens,
                elem_id="max-new-tokens",
            ),
            repetition_penalty=slider(
                REPETITION_PENALTY_RANGE,
                defaults.repetition_penalty,
                step=0.01,
                label=labels.repetition_penalty,
                elem_id="repetition-penalty",
            ),
        )


def unqueued(app: gr.Blocks, handler: Callable[[ChatSession], Any], labels: Labels) -> Callable:
    """``handler``, then the session's requests still waiting in ``app``'s queue are cancelled too.

    Gradio's ``cancels=`` is not used: it only reaches what the browser tab
    knows about (an API client's waiting request would still run after Stop),
    and when the running answer ended on its own just before the tab's cancel
    arrived (as it does once the session's stop event is set), the tab never
    heard the event end and showed it running for good.
    """

    async def run(session_state: ChatSession, request: gr.Request):
        result = handler(session_state)
        if request.session_hash:
            await cancel_waiting(app, request.session_hash, labels.stopped_before_start)
        return result

    run.__name__ = handler.__name__
    return reported(run, labels)


def wire_events(
    app: gr.Blocks,
    controller: ChatController,
    labels: Labels,
    session: gr.State,
    chat: ChatColumn,
    settings: SettingsPanel,
) -> None:
    """Connect the page's events to ``controller`` under their API names (call inside ``app``'s context)."""
    inputs = settings.inputs()
    generating = {"concurrency_limit": 1, "concurrency_id": GENERATE, "show_progress": "minimal"}
    chat.message.submit(
        reported(controller.chat, labels),
        [chat.message, session, *inputs],
        [chat.chatbot, chat.message],
        api_name="chat",
        **generating,
    )
    chat.retry.click(
        reported(controller.retry, labels), [session, *inputs], [chat.chatbot], api_name="retry", **generating
    )
    # Light events skip the queue, so Stop works even when the queue is full. They end a running answer through
    # the session (it stops at its next token and completes as usual), not through Gradio's cancels= (unqueued).
    light = {"queue": False}
    chat.stop.click(unqueued(app, controller.stop, labels), [session], None, api_name="stop", **light)
    chat.delete_last.click(
        unqueued(app, controller.delete_last, labels), [session], [chat.chatbot], api_name="delete_last", **light
    )
    chat.new_conversation.click(
        unqueued(app, controller.new_conversation, labels),
        [session],
        [chat.chatbot],
        api_name="new_conversation",
        **light,
    )
    # The chat window's own trash button must clear the conversation too, not just the display.
    chat.chatbot.clear(
        unqueued(app, controller.new_conversation, labels), [session], [chat.chatbot], api_visibility="private", **light
    )
