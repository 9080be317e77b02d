"""One browser's conversation: its turns, its images and its Stop switch.

Each browser session gets its own :class:`ChatSession` (a ``gr.State``), so two
people chatting at once never see each other's history, images or Stop. The
session is the source of truth: the chat display is rebuilt from it, and the
model sees it rendered as role/content messages (:meth:`ChatSession.conversation`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from yuren_core.chatml import user_content


@dataclass
class Attachment:
    """An uploaded image: the file Gradio stored (for display) and what the backend made of it."""

    path: str
    prepared: Any


@dataclass
class Exchange:
    """A user turn (text and images) and the answer to it (possibly partial)."""

    text: str
    attachments: list[Attachment] = field(default_factory=list)
    answer: str = ""


@dataclass
class ChatSession:
    """A conversation and the generation currently writing into it.

    Every :meth:`begin` starts a new generation with its own stop event;
    :meth:`stop`, :meth:`delete_last` and :meth:`clear` end the running one,
    and a generation that is no longer :meth:`current` must stop writing.
    Only deepcopy-able fields until the first generation: Gradio deep-copies a
    ``gr.State``'s initial value for every new browser session.
    """

    exchanges: list[Exchange] = field(default_factory=list)
    # Oldest turns removed because they could never fit the model's context again, and what the user is told.
    dropped_turns: int = 0
    notice: str = ""
    _generation: int = 0
    _stop_event: threading.Event | None = None

    def begin(self) -> tuple[int, threading.Event]:
        """Start a generation (stopping any running one); return its id and stop event."""
        self.stop()
        self._generation += 1
        self._stop_event = threading.Event()
        return self._generation, self._stop_event

    def current(self, generation: int) -> bool:
        """Whether ``generation`` is still the one allowed to write into this session."""
        return generation == self._generation

    def stop(self) -> None:
        """Ask the running generation, if any, to stop."""
        if self._stop_event is not None:
            self._stop_event.set()

    def delete_last(self) -> None:
        """Stop any generation and remove the last exchange (user turn and answer)."""
        self.stop()
        self._generation += 1
        if self.exchanges:
            self.exchanges.pop()

    def clear(self) -> None:
        """Stop any generation and forget the whole conversation."""
        self.stop()
        self._generation += 1
        self.exchanges.clear()
        self.dropped_turns = 0
        self.notice = ""

    def drop_oldest(self, count: int) -> None:
        """Forget the ``count`` oldest exchanges (never the newest), with their images."""
        count = min(count, len(self.exchanges) - 1)
        if count > 0:
            del self.exchanges[:count]
            self.dropped_turns += count

    @property
    def num_images(self) -> int:
        return sum(len(exchange.attachments) for exchange in self.exchanges)

    def conversation(self, system_prompt: str, image_position: str) -> tuple[list[dict], list[Any]]:
        """Role/content messages ending with the last user turn, and the prepared images in reading order.

        Each turn's images stand at ``image_position`` (the model config's: where
        its training put them). The last exchange's answer is what is being
        generated, so it is left out.
        """
        messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
        images: list[Any] = []
        for i, exchange in enumerate(self.exchanges):
            messages.append(
                {"role": "user", "content": user_content(exchange.text, len(exchange.attachments), image_position)}
            )
            images += [attachment.prepared for attachment in exchange.attachments]
            if i < len(self.exchanges) - 1:
                messages.append({"role": "assistant", "content": exchange.answer})
        return messages, images

    def display(self) -> list[dict]:
        """The conversation as ``gr.Chatbot`` messages (images shown in the turn they came with)."""
        shown: list[dict] = []
        if self.notice:
            shown.append({"role": "assistant", "content": {"type": "text", "text": self.notice}})
        for exchange in self.exchanges:
            for attachment in exchange.attachments:
                shown.append({"role": "user", "content": {"path": attachment.path}})
            if exchange.text:
                # A text part, not a bare string: Gradio would dedent a bare string and break code indentation.
                shown.append({"role": "user", "content": {"type": "text", "text": exchange.text}})
            shown.append({"role": "assistant", "content": {"type": "text", "text": exchange.answer}})
        return shown
