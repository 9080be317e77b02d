"""The one ChatML renderer: conversation in, ``input_ids`` and ``labels`` out.

Training, the web UI, the benchmarks and the tools all render through
:func:`render`, so a prompt at inference time is token-for-token what the model
saw in training. The layout is the one upstream YuRen trained on (its
``build_datasets`` run through transformers 4.30's slow tokenizer), so its
checkpoints see what they were trained on; as token pieces::

    <|im_start|> "system\\n{system}" <|im_end|>
    <|im_start|> "user\\n{user}" <|im_end|> <|im_start|> "assistant\\n" "{assistant}" <|im_end|> </s>
    <|im_start|> "user\\n..."

Each quoted piece is encoded on its own (with sentencepiece's dummy prefix when
the tokenizer has one), whitespace touching a special token is dropped, and
there is no newline between turns and no BOS. An image is a block of special
tokens inside the user piece, with the same whitespace rule.

Only assistant text, its ``<|im_end|>`` and the eos carry labels. Special tokens
are inserted as ids, never parsed out of text: a user who types ``<|im_end|>``
gets the ordinary pieces of that string, which is what makes ChatML resistant to
prompt injection (upstream's tokenizer did parse them; that is not kept).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from .constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_POSITIONS, SPIECE_UNDERLINE
from .vocab import SpecialIds, special_ids

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
# ShareGPT spells roles in "from"; upstream's data uses both "human" and "user".
_ROLE_ALIASES = {
    "system": SYSTEM,
    "human": USER,
    "user": USER,
    "gpt": ASSISTANT,
    "assistant": ASSISTANT,
}


class ConversationError(ValueError):
    """A conversation that cannot be rendered; the message says which turn and why."""


class ImageBlockTruncated(ConversationError):
    """Truncating to the length limit would cut through an image block."""


@dataclass(frozen=True)
class Image:
    """Marks where an image goes inside a message."""


IMAGE = Image()


@dataclass(frozen=True)
class Message:
    """One turn: a role and its content, text pieces interleaved with images."""

    role: str
    parts: tuple[str | Image, ...]

    @property
    def num_images(self) -> int:
        return sum(isinstance(p, Image) for p in self.parts)

    @property
    def text(self) -> str:
        return "".join(p for p in self.parts if isinstance(p, str))


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation; ``labels`` is ``input_ids`` with unsupervised positions at -100."""

    input_ids: list[int]
    labels: list[int]
    num_images: int

    @property
    def num_supervised(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


class ChatEncoder:
    """A tokenizer made ready for :func:`render`: its special ids and a text encoder of its own, built once.

    The encoder is a private copy of the tokenizer's ``tokenizers`` backend, set
    here once and never changed: special-token text is never parsed
    (``encode_special_tokens``), and there is no padding or truncation. The
    tokenizer's own call rewrites those settings on its shared backend at every
    call, so another thread's call could switch them in the middle of a render;
    it also builds offsets and masks that rendering does not use. Building one
    copies the tokenizer, so code that renders often (the web UI, the vLLM
    renderer, the data workers) builds one and passes it where a tokenizer goes.
    """

    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"rendering needs a tokenizers-backed (fast) tokenizer, got {type(tokenizer).__name__}: "
                "load it with yuren_core.vocab.load_tokenizer"
            )
        self.ids: SpecialIds = special_ids(tokenizer)
        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.encode_special_tokens = True
        self._backend.no_padding()
        self._backend.no_truncation()
        self._space_first = _drops_dummy_prefix_before_space(self._backend)

    @classmethod
    def of(cls, tokenizer) -> ChatEncoder:
        """``tokenizer`` itself if it is a :class:`ChatEncoder`, else one built from it."""
        return tokenizer if isinstance(tokenizer, cls) else cls(tokenizer)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids, the text encoded on its own as sentencepiece would (dummy prefix and all)."""
        if self._space_first:
            texts = [" " + text for text in texts]
        return [encoding.ids for encoding in self._backend.encode_batch_fast(texts, add_special_tokens=False)]


def split_image_placeholders(text: str) -> tuple[str | Image, ...]:
    """Split a LLaVA-style string on ``<image>`` into text pieces and image markers."""
    pieces = re.split(f"({re.escape(IMAGE_PLACEHOLDER)})", text)
    return tuple(IMAGE if p == IMAGE_PLACEHOLDER else p for p in pieces if p)


def to_messages(conversation: Iterable[Mapping]) -> list[Message]:
    """Normalise ShareGPT turns (``from``/``value``) or role/content messages into :class:`Message`.

    ShareGPT string values may mark images with ``<image>``. Role/content messages
    carry images structurally (``{"type": "image"}`` parts); their text is never
    scanned for placeholders, so what a user types stays text.
    """
    messages = []
    for i, turn in enumerate(conversation):
        if not isinstance(turn, Mapping):
            raise ConversationError(f"turn {i}: expected an object, got {type(turn).__name__}")
        if "from" in turn:
            role_name, content, field = turn["from"], turn.get("value"), "value"
            if not isinstance(content, str):
                raise ConversationError(f"turn {i}: field 'value' must be a string, got {_kind(content)}")
            parts = split_image_placeholders(content)
        elif "role" in turn:
            role_name, content, field = turn["role"], turn.get("content"), "content"
            parts = _content_parts(content, i)
        else:
            raise ConversationError(f"turn {i}: missing field 'from' (ShareGPT) or 'role' (role/content messages)")
        role = _ROLE_ALIASES.get(role_name) if isinstance(role_name, str) else None
        if role is None:
            known = ", ".join(sorted(_ROLE_ALIASES))
            raise ConversationError(f"turn {i}: unknown role {role_name!r} (known: {known})")
        if role != USER and any(isinstance(p, Image) for p in parts):
            raise ConversationError(f"turn {i}: images are only supported in user turns, found one in {field!r}")
        messages.append(Message(role, parts))
    return messages


def check_image_position(image_position: str) -> str:
    """Return ``image_position`` if it is one of :data:`~yuren_core.constants.IMAGE_POSITIONS`, else raise."""
    if image_position not in IMAGE_POSITIONS:
        raise ValueError(
            f"image_position must be one of {', '.join(map(repr, IMAGE_POSITIONS))}, got {image_position!r}"
        )
    return image_position


def user_message(text: str, num_images: int, image_position: str) -> Message:
    """A user turn of ``text`` and ``num_images`` images, the images where the model's training put them.

    ``image_position`` is the model config's (``"before_text"``: LLaVA-style
    data, ``"after_text"``: upstream's release). Whitespace between text and
    images is left out: :func:`render` drops it anyway, as upstream's tokenizer did.
    """
    images = (IMAGE,) * num_images
    if check_image_position(image_position) == "before_text":
        return Message(USER, (*images, text))
    return Message(USER, (text, *images))


def user_content(text: str, num_images: int, image_position: str) -> list[dict]:
    """:func:`user_message` as role/content parts (``{"type": "text"}`` / ``{"type": "image"}``)."""
    return [
        {"type": "image"} if isinstance(part, Image) else {"type": "text", "text": part}
        for part in user_message(text, num_images, image_position).parts
    ]


def with_images_placed(messages: Sequence[Message], image_position: str) -> list[Message]:
    """``messages`` with each user turn's images moved to ``image_position`` (text kept, images counted)."""
    return [
        user_message(m.text, m.num_images, image_position) if m.role == USER and m.num_images else m for m in messages
    ]


def _content_parts(content, index: int) -> tuple[str | Image, ...]:
    if isinstance(content, str):
        return (content,)
    if not isinstance(content, Sequence):
        raise ConversationError(
            f"turn {index}: field 'content' must be a string or a list of parts, got {_kind(content)}"
        )
    parts: list[str | Image] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind == "image":
            parts.append(IMAGE)
        else:
            raise ConversationError(
                f"turn {index}: content part {part!r} is neither {{'type': 'text', 'text': str}} nor {{'type': 'image'}}"
            )
    return tuple(parts)


def _kind(value) -> str:
    return "nothing" if value is None else type(value).__name__


def render(
    tokenizer,
    conversation: Iterable[Mapping] | Sequence[Message],
    *,
    image_seq_len: int | None = None,
    add_generation_prompt: bool = False,
    max_length: int | None = None,
) -> Rendered:
    """Render a conversation to token ids and labels, in the layout upstream YuRen trained on.

    ``image_seq_len`` is the number of patch tokens per image (the model config's
    ``image_seq_len``); each image becomes ``<|img_start|>`` + that many
    ``<|img_patch|>`` + ``<|img_end|>``. With ``add_generation_prompt`` the
    conversation must end with a user turn and the ids end with
    ``<|im_start|>assistant\\n``, ready for the model to answer (no BOS: training
    never had one). ``max_length`` is the training length limit, applied as
    upstream's training data applied its ``model_max_length``: see
    :func:`truncated`. ``tokenizer`` may be a :class:`ChatEncoder` built from
    one, which saves building it again.
    """
    encoder = ChatEncoder.of(tokenizer)
    conversation = list(conversation)
    messages = conversation if all(isinstance(m, Message) for m in conversation) else to_messages(conversation)
    (rendered,) = render_many(
        encoder, [messages], image_seq_len=image_seq_len, add_generation_prompt=add_generation_prompt
    )
    if isinstance(rendered, ConversationError):
        raise rendered
    if max_length is None:
        return rendered
    if add_generation_prompt:
        raise ConversationError("max_length truncates training data; a generation prompt is never truncated")
    return truncated(rendered, max_length, encoder.ids)


def render_many(
    tokenizer,
    conversations: Iterable[Sequence[Message]],
    *,
    image_seq_len: int | None = None,
    add_generation_prompt: bool = False,
) -> list[Rendered | ConversationError]:
    """:func:`render` for many conversations of :class:`Message`, their text encoded in one tokenizer call.

    A conversation that cannot be rendered comes back as its
    :class:`ConversationError`, in its place. Each piece is still encoded on
    its own, so every result is token for token what :func:`render` gives.
    ``tokenizer`` may be a :class:`ChatEncoder`, as for :func:`render`.
    """
    encoder = ChatEncoder.of(tokenizer)
    ids = encoder.ids
    block = image_block(ids, image_seq_len) if image_seq_len is not None else []
    planned: list[tuple[list[tuple[list[str | list[int]], bool]], int] | ConversationError] = []
    for messages in conversations:
        try:
            turns = _turns(messages, ids, block, image_seq_len, add_generation_prompt)
        except ConversationError as error:
            planned.append(error)
            continue
        planned.append((turns, sum(m.num_images for m in messages)))

    texts = [
        piece
        for plan in planned
        if not isinstance(plan, ConversationError)
        for pieces, _ in plan[0]
        for piece in pieces
        if isinstance(piece, str)
    ]
    encoded = iter(encoder.encode(texts) if texts else [])
    return [plan if isinstance(plan, ConversationError) else _assembled(*plan, encoded, ids) for plan in planned]


def truncated(rendered: Rendered, max_length: int, ids: SpecialIds) -> Rendered:
    """``rendered`` cut to the training limit ``max_length`` exactly as upstream's training data was cut.

    Upstream (``build_datasets``, ``model_max_length``) kept the first
    ``max_length - 1`` tokens of a conversation and, where the last one kept
    was not already the eos, overwrote it with the eos, labelled as the eos:
    a cut conversation always ends on a supervised eos, so the model learned to
    stop at the limit. A conversation of at most ``max_length - 1`` tokens is
    returned as it is. A cut into or before an image block raises
    :class:`ImageBlockTruncated`: an image cannot be spliced in part, and the
    caller's images must all find their block.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (one token and the eos), got {max_length}")
    keep = max_length - 1
    if len(rendered.input_ids) <= keep:
        return rendered
    input_ids, labels = rendered.input_ids[:keep], rendered.labels[:keep]
    if rendered.num_images:
        last_marker = max(i for i, t in enumerate(rendered.input_ids) if t in (ids.img_start, ids.img_end))
        # The last kept position becomes the eos, so an image block must end before it.
        if last_marker >= keep - 1:
            raise ImageBlockTruncated(
                f"the conversation is {len(rendered.input_ids)} tokens; max_length={max_length} keeps "
                f"{keep - 1} of them before the closing eos, which cuts an image block"
            )
    if input_ids[-1] != ids.eos:
        input_ids[-1] = labels[-1] = ids.eos
    return Rendered(input_ids=input_ids, labels=labels, num_images=rendered.num_images)


def _turns(
    messages: Sequence[Message],
    ids: SpecialIds,
    block: list[int],
    image_seq_len: int | None,
    add_generation_prompt: bool,
) -> list[tuple[list[str | list[int]], bool]]:
    """The conversation as turns of text pieces and id runs, each with whether it is supervised."""
    if add_generation_prompt and (not messages or messages[-1].role != USER):
        raise ConversationError("a generation prompt needs the conversation to end with a user turn")
    if image_seq_len is None and any(m.num_images for m in messages):
        raise ConversationError("the conversation has an image but no image_seq_len was given")

    # Upstream encoded each turn as one string with its special tokens typed in:
    #   system:    "<|im_start|>system\n{text}<|im_end|>"
    #   user:      "\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    #   assistant: "{text}<|im_end|>" and then the eos id.
    # Its slow tokenizer cut such a string at the special tokens, stripped the
    # whitespace on both sides of each one (so the "\n"s around them vanish) and
    # encoded every remaining piece on its own, each with its own sentencepiece
    # dummy prefix. Here each turn is a list of text pieces and ids in that
    # order; the ids are inserted as ids, so text is never parsed for them.
    turns: list[tuple[list[str | list[int]], bool]] = []  # (pieces, supervised)
    for message in messages:
        if message.role == SYSTEM:
            turns.append(([[ids.im_start], f"system\n{message.text}", [ids.im_end]], False))
        elif message.role == USER:
            pieces: list[str | list[int]] = [[ids.im_start], "user\n"]
            pieces += [block if isinstance(part, Image) else part for part in message.parts]
            pieces += [[ids.im_end], [ids.im_start], "assistant\n"]
            turns.append((pieces, False))
        else:
            turns.append(([message.text, [ids.im_end]], True))
    return [(_stripped_around_specials(pieces), supervised) for pieces, supervised in turns]


def _assembled(
    turns: list[tuple[list[str | list[int]], bool]], num_images: int, encoded: Iterator[list[int]], ids: SpecialIds
) -> Rendered:
    """The ids and labels of ``turns``, taking each text piece's ids from ``encoded`` in order."""
    input_ids: list[int] = []
    labels: list[int] = []
    for pieces, supervised in turns:
        for piece in pieces:
            piece_ids = next(encoded) if isinstance(piece, str) else piece
            input_ids += piece_ids
            labels += piece_ids if supervised else [IGNORE_INDEX] * len(piece_ids)
        if supervised:
            input_ids.append(ids.eos)
            labels.append(ids.eos)
    return Rendered(input_ids=input_ids, labels=labels, num_images=num_images)


def _stripped_around_specials(pieces: list[str | list[int]]) -> list[str | list[int]]:
    """Join adjacent text, strip whitespace touching an id run (as upstream's tokenizer did), drop empty text."""
    merged: list[str | list[int]] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    out: list[str | list[int]] = []
    for i, piece in enumerate(merged):
        if isinstance(piece, str):
            if i > 0:
                piece = piece.lstrip()
            if i < len(merged) - 1:
                piece = piece.rstrip()
            if not piece:
                continue
        out.append(piece)
    return out


def _leading_spaces(backend: Tokenizer, text: str) -> int:
    pieces = "".join(backend.encode(text, add_special_tokens=False).tokens)
    return len(pieces) - len(pieces.lstrip(SPIECE_UNDERLINE))


def _drops_dummy_prefix_before_space(backend: Tokenizer) -> bool:
    """Whether ``backend`` adds sentencepiece's dummy prefix, except to text that starts with a space.

    sentencepiece always adds it (``" a"`` -> ``"▁▁a"``); the ``tokenizers``
    Metaspace pre-tokenizer skips it when the text already starts with one
    (``"▁a"``). Upstream's pieces went through sentencepiece, so for such a
    tokenizer each piece is encoded with the space written out.
    """
    return _leading_spaces(backend, "a") == 1 and _leading_spaces(backend, " a") == 1


def image_block(ids: SpecialIds, image_seq_len: int) -> list[int]:
    """The token ids standing for one image: start, ``image_seq_len`` patches, end."""
    return [ids.img_start, *[ids.img_patch] * image_seq_len, ids.img_end]


def chat_template(tokenizer, image_seq_len: int | None = None) -> str:
    """A Jinja chat template that renders what :func:`render` renders with ``add_generation_prompt=True``.

    Saved with the tokenizer (``tokenizer.chat_template``), it lets
    ``apply_chat_template`` and evaluation harnesses format prompts the
    trained way (vLLM's server renders through :func:`render` itself, see
    ``yuren_vllm.renderer``): the same pieces, the same whitespace stripped
    around special tokens, each image (a ``{"type": "image"}`` content part)
    as ``<|img_start|>`` + ``image_seq_len`` x ``<|img_patch|>`` + ``<|img_end|>``.
    Without ``image_seq_len`` (a text-only model) an image is an error. A user
    turn always ends in the generation prompt, as :func:`render` writes it.

    Unlike :func:`render`, a tokenizer applying the template parses special
    tokens typed into message text; our own code keeps rendering through
    :func:`render`. Each piece is written after a space when the tokenizer
    gives a lone piece sentencepiece's dummy prefix, which inside a longer
    string it would not.
    """
    ids = special_ids(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens
    prefix = " " if _leading_spaces(tokenizer.backend_tokenizer, "a") == 1 else ""

    def literal(text: str) -> str:
        # Every literal goes through an expression: text between tags would be at the mercy of whitespace control.
        return "{{ " + repr(text) + " }}"

    def piece(expression: str) -> str:
        # render drops a piece that is empty once stripped, and encodes the rest on its own.
        return f"{{% if {expression} %}}{{{{ {prefix!r} ~ {expression} }}}}{{% endif %}}"

    im_start, im_end, eos = (literal(t) for t in tokens([ids.im_start, ids.im_end, ids.eos]))
    if image_seq_len is None:
        image = "{{ raise_exception('this model reads text only, but a message has an image') }}"
    else:
        image = literal("".join(tokens(image_block(ids, image_seq_len))))
    roles = ", ".join(f"{alias!r}: {role!r}" for alias, role in _ROLE_ALIASES.items())
    text_parts = (
        "{% if message['content'] is not string %}{% for part in message['content'] %}"
        "{% if part['type'] == 'text' %}{% set ns.text = ns.text ~ part['text'] %}"
    )
    return "".join(
        [
            f"{{% set roles = {{{roles}}} %}}",
            "{% for message in messages %}",
            "{% set role = roles.get(message['role']) %}",
            "{% if role is none %}{{ raise_exception('unknown role ' ~ message['role']) }}{% endif %}",
            "{% set ns = namespace(text='') %}",
            "{% if message['content'] is string %}{% set ns.text = message['content'] %}{% endif %}",
            "{% if role == 'user' %}",
            im_start,
            "{% set ns.text = 'user\\n' ~ ns.text %}",
            text_parts,
            "{% elif part['type'] in ['image', 'image_url'] %}",
            piece("(ns.text | trim)"),
            image,
            "{% set ns.text = '' %}",
            "{% endif %}{% endfor %}{% endif %}",
            piece("(ns.text | trim)"),
            im_end,
            im_start,
            literal(prefix + "assistant\n"),
            "{% else %}",
            text_parts,
            "{% else %}{{ raise_exception('images are only supported in user turns') }}",
            "{% endif %}{% endfor %}{% endif %}",
            "{% if role == 'system' %}",
            im_start,
            piece("('system\\n' ~ ns.text) | trim"),
            im_end,
            "{% else %}",
            piece("ns.text.rstrip()"),
            im_end,
            eos,
            "{% endif %}{% endif %}{% endfor %}",
        ]
    )
