"""SFT data: reading conversation files, validating them, tokenizing them, caching the result.

Input files are ShareGPT JSON (a list of records, as upstream's ``sft.dev.json``)
or JSON Lines (one record per line); the first non-blank character tells them
apart. A record is ``{"conversations": [turn, ...]}``, turns as
:func:`yuren_core.chatml.to_messages` takes them; it may name images in
``"image"`` (one path) or ``"images"`` (a list), which the rows carry along for
the multimodal stages. Records holding only a ``"__comment__"`` (upstream's
license note) are skipped.

Every problem found is reported with the file, the line and record index, and
the field, all at once, before any training starts. Conversations left without
a supervised token (no assistant text, or all of it cut off by truncation) are
dropped and counted; they are never trained on by copying prompt tokens into
the labels, as upstream did.

Tokenized rows are cached with ``datasets`` (``save_to_disk``), keyed by the
file's content, the tokenizer, the renderer's source and the settings, so a
changed input never meets a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

from yuren_core import chatml
from yuren_core.atomic import atomic_directory
from yuren_core.chatml import USER, ConversationError, Image, ImageBlockTruncated, Message, render, to_messages

from .packing import pack_rows

logger = logging.getLogger(__name__)

# Bump when the layout of the cached rows changes.
CACHE_FORMAT = 1
MAX_REPORTED_ERRORS = 20


class DataError(ValueError):
    """Input records that cannot be used; the message lists each one with file, line, record and field."""


def error_list(heading: str, errors: list[str]) -> str:
    """``heading`` and then one indented line per error, the first ``MAX_REPORTED_ERRORS`` of them."""
    shown = "\n  ".join(errors[:MAX_REPORTED_ERRORS])
    more = f"\n  ... and {len(errors) - MAX_REPORTED_ERRORS} more" if len(errors) > MAX_REPORTED_ERRORS else ""
    return f"{heading}:\n  {shown}{more}"


@dataclass(frozen=True)
class Conversation:
    """One validated record: where it came from, its messages and the image paths it names."""

    source: str
    messages: list[Message]
    images: tuple[str, ...] = ()


@dataclass
class TokenizeStats:
    """What tokenizing a file kept, cut and dropped."""

    conversations: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_unsupervised: int = 0
    dropped_image_cut: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    rows: int = 0

    def describe(self, name: str) -> str:
        """A one-line summary for the log."""
        return (
            f"{name}: {self.conversations} conversations, {self.kept} kept in {self.rows} rows "
            f"({self.tokens} tokens, {self.supervised_tokens} supervised); {self.truncated} truncated, "
            f"{self.dropped_unsupervised} dropped with no supervised token, "
            f"{self.dropped_image_cut} dropped because truncation would cut an image"
        )


def read_conversations(path: str | os.PathLike) -> list[Conversation]:
    """Read and validate every record of a ShareGPT JSON or JSON Lines file.

    Raises :class:`DataError` listing every bad record (up to
    ``MAX_REPORTED_ERRORS``) with its line, index and field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(no_such_file(path)) from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None

    conversations: list[Conversation] = []
    errors: list[str] = []
    for where, record in _records(path, text):
        if isinstance(record, DataError):
            errors.append(str(record))
            continue
        if isinstance(record, Mapping) and "__comment__" in record and "conversations" not in record:
            continue
        try:
            conversations.append(_conversation(where, record))
        except DataError as error:
            errors.append(str(error))
    if errors:
        raise DataError(error_list(f"{len(errors)} bad record(s) in {path}", errors))
    if not conversations:
        raise DataError(f"{path}: no conversations found")
    return conversations


def no_such_file(path: Path) -> str:
    """The message for a conversation file that is not there."""
    return f"{path}: no such file; check the path, which must name a ShareGPT JSON or JSON Lines file of conversations"


def _records(path: Path, text: str) -> Iterator[tuple[str, object]]:
    """Yield ``(location, record)``; a record that does not parse comes as a :class:`DataError`."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _json_array_records(path, text)
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                yield where, DataError(f"{where}: malformed JSON line: {error.msg} at column {error.colno}")


def _json_array_records(path: Path, text: str) -> Iterator[tuple[str, object]]:
    """Decode a JSON list element by element, so each record knows its line.

    A syntax error ends the file (nothing after it can be trusted) and is
    reported with its line and column.
    """
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    index = 0

    def line_of(offset: int) -> int:
        return text.count("\n", 0, offset) + 1

    def skip_space(offset: int) -> int:
        while offset < len(text) and text[offset] in " \t\r\n":
            offset += 1
        return offset

    pos = skip_space(pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        where = f"{path}:{line_of(pos)} (record {index})"
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as error:
            yield where, DataError(f"{path}:{error.lineno}: malformed JSON: {error.msg} at column {error.colno}")
            return
        yield where, record
        index += 1
        pos = skip_space(pos)
        if pos < len(text) and text[pos] == ",":
            pos = skip_space(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        problem = "the file ends" if pos >= len(text) else f"found {text[pos]!r}"
        yield (
            where,
            DataError(
                f"{path}:{line_of(pos)}: malformed JSON: expected ',' or ']' after record {index - 1}, {problem}"
            ),
        )
        return


def _conversation(where: str, record: object) -> Conversation:
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected an object with a 'conversations' field, got {type(record).__name__}")
    if "conversations" not in record:
        raise DataError(f"{where}: missing field 'conversations'")
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field 'conversations' must be a non-empty list of turns")
    try:
        messages = to_messages(turns)
    except ConversationError as error:
        raise DataError(f"{where}: field 'conversations', {error}") from None
    return Conversation(source=where, messages=messages, images=image_paths(where, record))


def image_paths(where: str, record: Mapping) -> tuple[str, ...]:
    """The image paths a record names: field ``image`` (one path) or ``images`` (a list), never both."""
    if "image" in record and "images" in record:
        raise DataError(f"{where}: give either field 'image' or field 'images', not both")
    if "image" in record:
        images = [record["image"]]
        field = "image"
    else:
        images = record.get("images", [])
        field = "images"
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise DataError(f"{where}: field {field!r} must be a path (image) or a list of paths (images)")
    return tuple(images)


def image_position_of(conversations: Sequence[Conversation], default: str) -> tuple[str, Counter]:
    """Where most user turns with images put them: ``"before_text"`` or ``"after_text"``; ``default`` on a tie.

    A turn counts as ``before_text`` when only whitespace precedes its first
    image, as ``after_text`` when only whitespace follows its last one; a turn
    with text on both sides (or none at all) counts for neither. Returns the
    position and the counts, so the caller can say how it was decided.
    """
    counts: Counter = Counter()
    for conversation in conversations:
        for message in conversation.messages:
            if message.role != USER or not message.num_images:
                continue
            image_at = [i for i, part in enumerate(message.parts) if isinstance(part, Image)]
            text_at = [i for i, part in enumerate(message.parts) if isinstance(part, str) and part.strip()]
            before = not text_at or text_at[0] > image_at[0]
            after = not text_at or text_at[-1] < image_at[-1]
            if before != after:
                counts["before_text" if before else "after_text"] += 1
    if counts["before_text"] == counts["after_text"]:
        return default, counts
    return max(counts, key=counts.get), counts


def tokenize(
    conversations: Sequence[Conversation],
    tokenizer,
    *,
    max_length: int,
    image_seq_len: int | None = None,
) -> tuple[dict[str, list], TokenizeStats]:
    """Render conversations to columns ``input_ids``, ``labels``, ``length``, ``images``.

    Conversations longer than ``max_length`` are truncated (labels cut with the
    ids, so they stay aligned). A conversation without a supervised token left,
    or one whose truncation would cut an image block, is dropped and counted.
    A conversation whose number of images differs from the image paths it
    names raises :class:`DataError`.
    """
    stats = TokenizeStats(conversations=len(conversations))
    columns: dict[str, list] = {"input_ids": [], "labels": [], "length": [], "images": []}
    for conversation in conversations:
        try:
            full = render(tokenizer, conversation.messages, image_seq_len=image_seq_len)
        except ImageBlockTruncated:
            stats.dropped_image_cut += 1
            continue
        except ConversationError as error:
            raise DataError(f"{conversation.source}: field 'conversations', {error}") from None
        if full.num_images != len(conversation.images):
            raise DataError(
                f"{conversation.source}: the conversation has {full.num_images} image placeholder(s) but names "
                f"{len(conversation.images)} image path(s) in 'image'/'images'"
            )
        rendered = full
        if len(full.input_ids) > max_length:
            try:
                rendered = render(tokenizer, conversation.messages, image_seq_len=image_seq_len, max_length=max_length)
            except ImageBlockTruncated:
                stats.dropped_image_cut += 1
                continue
            stats.truncated += 1
        if rendered.num_supervised == 0:
            stats.dropped_unsupervised += 1
            continue
        stats.kept += 1
        stats.tokens += len(rendered.input_ids)
        stats.supervised_tokens += rendered.num_supervised
        columns["input_ids"].append(rendered.input_ids)
        columns["labels"].append(rendered.labels)
        columns["length"].append(len(rendered.input_ids))
        columns["images"].append(list(conversation.images))
    stats.rows = stats.kept
    return columns, stats


def load_sft_dataset(
    path: str | os.PathLike,
    tokenizer,
    *,
    max_length: int,
    packing: bool = False,
    image_seq_len: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[datasets.Dataset, TokenizeStats]:
    """Read, validate, tokenize (and with ``packing`` pack) a conversation file, through a cache.

    Returns the rows as a ``datasets.Dataset`` (columns ``input_ids``,
    ``labels``, ``length``, ``images``, ``seq_lengths``) and the statistics of
    the tokenization. ``seq_lengths`` lists the length of each conversation in
    a row: one entry without packing.
    """
    path = Path(path)
    if not path.is_file():
        # Before the cache key, which hashes the file.
        raise DataError(no_such_file(path))
    cache_root = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE) / "yuren_sft"
    key = _cache_key(path, tokenizer, max_length=max_length, packing=packing, image_seq_len=image_seq_len)
    cached = cache_root / f"{path.stem}-{key[:20]}"
    if (cached / "yuren_stats.json").is_file():
        logger.info("using tokenized %s from the cache at %s", path, cached)
        stats = TokenizeStats(**json.loads((cached / "yuren_stats.json").read_text()))
        return datasets.load_from_disk(str(cached)), stats

    columns, stats = tokenize(read_conversations(path), tokenizer, max_length=max_length, image_seq_len=image_seq_len)
    if packing:
        columns = pack_rows(columns, max_length)
    else:
        columns["seq_lengths"] = [[n] for n in columns["length"]]
    stats.rows = len(columns["input_ids"])
    if stats.rows == 0:
        raise DataError(f"{path}: no conversation has a supervised token; nothing to train on")
    dataset = datasets.Dataset.from_dict(columns, features=_features())

    # Written beside the final place and renamed into it, so a crash never leaves a half cache behind.
    with atomic_directory(cached) as staging:
        dataset.save_to_disk(str(staging))
        (staging / "yuren_stats.json").write_text(json.dumps(asdict(stats)))
    return datasets.load_from_disk(str(cached)), stats


def _features() -> datasets.Features:
    ids = datasets.Sequence(datasets.Value("int32"))
    return datasets.Features(
        {
            "input_ids": ids,
            "labels": ids,
            "length": datasets.Value("int32"),
            "images": datasets.Sequence(datasets.Value("string")),
            "seq_lengths": ids,
        }
    )


def _cache_key(path: Path, tokenizer, **settings) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True).encode())
    digest.update(_file_digest(path))
    # The renderer decides every id and label: a changed renderer must miss the cache.
    digest.update(_file_digest(Path(chatml.__file__)))
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    return digest.hexdigest()


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides how the tokenizer maps text to ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = {
        "class": type(tokenizer).__name__,
        # The fast tokenizer's serialization holds vocabulary, merges, normalizer and added tokens.
        "tokenizer": backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items()),
        "special": tokenizer.special_tokens_map,
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()
