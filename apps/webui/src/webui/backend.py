"""What the chat UI needs from a model, as a small interface.

The UI (:mod:`webui.app`) only talks to a :class:`ChatBackend`, so it can be
driven by the real model (:class:`webui.engine.ModelBackend`) or by a fake in
tests. Messages are role/content dicts as :func:`yuren_core.chatml.render`
takes them; images travel separately, in reading order, as whatever the
backend's :meth:`ChatBackend.prepare_image` returned for them.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from PIL import Image

# Slider ranges; GenerationParams enforces them for API callers, who skip the sliders.
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.01, 1.0)
REPETITION_PENALTY_RANGE = (1.0, 2.0)
MAX_NEW_TOKENS_RANGE = (1, 2048)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an accelerator or host allocation failure (the request failed, the server is fine)."""
    # Not imported for this: a backend talking to a server never loads torch, and then raised no torch error.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


@dataclass(frozen=True)
class GenerationParams:
    """Sampling controls for one answer. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens": MAX_NEW_TOKENS_RANGE,
            "temperature": TEMPERATURE_RANGE,
            "top_p": TOP_P_RANGE,
            "repetition_penalty": REPETITION_PENALTY_RANGE,
        }
        for name, (low, high) in checks.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {value}")
        if int(self.max_new_tokens) != self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be a whole number, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


Built = TypeVar("Built")


def split_system(messages: Sequence[Mapping]) -> tuple[list, list, list[int]]:
    """``(system, turns, starts)``: the leading system message (if any), the rest, and where each user turn starts."""
    messages = list(messages)
    system = messages[:1] if messages and messages[0].get("role") == "system" else []
    turns = messages[len(system) :]
    starts = [i for i, message in enumerate(turns) if message.get("role") == "user"]
    if not starts:
        raise ValueError("the conversation has no user turn to answer")
    return system, turns, starts


def drop_oldest_to_fit(
    from_turn: Callable[[int], Built], length: Callable[[Built], int], user_turns: int, budget: int
) -> tuple[Built, int]:
    """The prompt with the fewest oldest user turns left out that fits ``budget`` tokens, and how many were.

    ``from_turn(k)`` builds the prompt leaving out the first ``k`` of
    ``user_turns`` user turns (with the answers to them); ``length`` counts its
    tokens. The result is over budget only when the newest user turn alone does
    not fit (then all the others are left out).
    """
    # Usually everything fits: one build. Otherwise bisect (leaving out more turns never makes a prompt longer).
    fitted, dropped = from_turn(0), 0
    if length(fitted) > budget:
        dropped = user_turns - 1
        fitted = from_turn(dropped)
        if length(fitted) > budget:
            return fitted, dropped
        low = 1  # invariant: from_turn(low - 1) is too long, fitted = from_turn(dropped) fits
        while low < dropped:
            middle = (low + dropped) // 2
            candidate = from_turn(middle)
            if length(candidate) > budget:
                low = middle + 1
            else:
                fitted, dropped = candidate, middle
    return fitted, dropped


class PromptTooLong(ValueError):
    """The newest user turn (with the system prompt and room for the answer) exceeds the context."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_length: int):
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length
        super().__init__(
            f"the system prompt and the new message take {prompt_tokens} tokens; with {max_new_tokens} tokens "
            f"reserved for the answer that exceeds the model's context of {context_length} tokens"
        )


class ImagesNotSupported(ValueError):
    """The loaded model reads text only."""


@runtime_checkable
class ChatBackend(Protocol):
    """A chat model the UI can stream answers from."""

    @property
    def context_length(self) -> int:
        """Tokens the model attends to: prompt plus answer."""
        ...

    @property
    def supports_images(self) -> bool:
        """Whether :meth:`prepare_image` accepts images."""
        ...

    @property
    def image_position(self) -> str:
        """Where a user turn's images go relative to its text: ``"before_text"`` or ``"after_text"``, as trained."""
        ...

    def prepare_image(self, image: Image.Image) -> Any:
        """Turn a checked, decoded image into what :meth:`stream` takes (raises :class:`ImagesNotSupported`)."""
        ...

    def unreachable_turns(self, messages: Sequence[Mapping], images: Sequence[Any]) -> int:
        """How many of the oldest user turns (with their answers) can never be part of a prompt again.

        Those are the turns that would be left out even with no system prompt
        and a one-token answer: the conversation only grows, so they stay out.
        The newest user turn is never counted.
        """
        ...

    def stream(
        self,
        messages: Sequence[Mapping],
        images: Sequence[Any],
        params: GenerationParams,
        stop_event: threading.Event,
    ) -> Iterator[str]:
        """Yield the assistant's answer to ``messages`` piece by piece.

        ``messages`` ends with a user turn. When the conversation does not fit
        the context, the oldest turns are left out; when the newest turn alone
        does not fit, :class:`PromptTooLong` is raised before anything is
        yielded. Setting ``stop_event`` ends the generation early.
        """
        ...
