"""Conversation records: ShareGPT / LLaVA files read as a stream, each record validated and located.

Input files are ShareGPT JSON (a list of records, as upstream's ``sft.dev.json``
and LLaVA's ``llava_v1_5_mix665k.json``) or JSON Lines (one record per line);
the first non-blank character tells them apart. A record is
``{"conversations": [turn, ...]}``, turns as :func:`yuren_core.chatml.to_messages`
takes them; it may name images in ``"image"`` (one path) or ``"images"`` (a
list). Records holding only a ``"__comment__"`` (upstream's license note) are
skipped.

Files are read in fixed-size chunks, never whole: a JSON list is cut into its
records by a scanner that passes over each character once (counting lines as it
goes), and each record is decoded on its own, so time grows with the file and
memory with the largest record. Every problem is reported with the file, the
line and record index, and the field; :func:`read_conversations` lists all of
them (up to :data:`MAX_REPORTED_ERRORS`) once the file has been read.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .chatml import ConversationError, Message, to_messages

MAX_REPORTED_ERRORS = 20
# Characters read from the file at a time; a record longer than this makes the next read as long as the record.
CHUNK_CHARS = 1 << 20


class DataError(ValueError):
    """Input records that cannot be used; the message lists each one with file, line, record and field."""


@dataclass
class ErrorReport:
    """Problems found while reading: the first :data:`MAX_REPORTED_ERRORS` kept word for word, the rest counted."""

    shown: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.shown) < MAX_REPORTED_ERRORS:
            self.shown.append(message)

    def message(self, heading: str) -> str:
        """``heading`` and then one indented line per kept problem, and how many more there were."""
        shown = "\n  ".join(self.shown)
        more = f"\n  ... and {self.count - len(self.shown)} more" if self.count > len(self.shown) else ""
        return f"{heading}:\n  {shown}{more}"


@dataclass(frozen=True)
class Conversation:
    """One validated record: where it came from, its messages and the image paths it names."""

    source: str
    messages: list[Message]
    images: tuple[str, ...] = ()


def read_conversations(path: str | os.PathLike) -> Iterator[Conversation]:
    """Read and validate the records of a ShareGPT JSON or JSON Lines file, one at a time.

    Yields each good record as it is read. Once the file is read, raises
    :class:`DataError` listing every bad record (up to ``MAX_REPORTED_ERRORS``)
    with its line, index and field, or saying that the file holds no conversation.
    """
    path = Path(path)
    errors = ErrorReport()
    found = False
    for where, record in read_records(path):
        if isinstance(record, DataError):
            errors.add(str(record))
            continue
        if isinstance(record, Mapping) and "__comment__" in record and "conversations" not in record:
            continue
        try:
            conversation = to_conversation(where, record)
        except DataError as error:
            errors.add(str(error))
            continue
        found = True
        yield conversation
    if errors.count:
        raise DataError(errors.message(f"{errors.count} bad record(s) in {path}"))
    if not found:
        raise DataError(f"{path}: no conversations found")


def batches(items: Iterable, size: int) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last one shorter), taken from the stream as they are needed."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def no_such_file(path: Path) -> str:
    """The message for a conversation file that is not there."""
    return f"{path}: no such file; check the path, which must name a ShareGPT JSON or JSON Lines file of conversations"


def read_records(path: str | os.PathLike) -> Iterator[tuple[str, object]]:
    """Yield ``(location, record)`` for each record of the file; one that does not parse comes as a :class:`DataError`.

    The location is ``file:line`` for JSON Lines and ``file:line (record i)``
    for a JSON list. A syntax error in a JSON list ends the file (nothing after
    it can be trusted); a file that is not UTF-8 raises :class:`DataError`.
    """
    path = Path(path)
    try:
        file = open(path, encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(no_such_file(path)) from None
    with file:
        try:
            is_list = _first_character(file) == "["
            file.seek(0)
            if is_list:
                yield from _ArrayScanner(path, file).records()
            else:
                yield from _json_lines(path, file)
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text ({error})") from None


def _first_character(file) -> str:
    """The file's first character that is not whitespace ('' if there is none)."""
    for chunk in iter(lambda: file.read(CHUNK_CHARS), ""):
        stripped = chunk.lstrip()
        if stripped:
            return stripped[0]
    return ""


def _json_lines(path: Path, lines: Iterable[str]) -> Iterator[tuple[str, object]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line.rstrip("\n"))
        except json.JSONDecodeError as error:
            yield where, DataError(f"{where}: malformed JSON line: {error.msg} at column {error.colno}")


# The scanner's steps: the next character that opens or closes a value, and the rest of a string after its quote.
_STRUCTURE = re.compile(r'[{}\[\]"]')
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SCALAR = re.compile(r"[^,\]\s]*")
_SPACE = re.compile(r"[ \t\r\n]*")


class _ArrayScanner:
    """Cut a JSON list read from ``file`` into its records, each decoded alone and located by line.

    The buffer holds the unread part of the last chunk; a record that runs past
    it makes the next read at least as long as the record, so no character is
    scanned more than a few times. Lines are counted over each stretch of text
    once, as the scanner moves past it.
    """

    def __init__(self, path: Path, file):
        self.path = path
        self.file = file
        self.buffer = ""
        self.pos = 0
        self.offset = 0  # characters of the file before buffer[0]
        self.line = 1  # the line of buffer[pos]
        self.line_start = 0  # the file offset where that line starts
        self.at_end = False

    def records(self) -> Iterator[tuple[str, object]]:
        self.skip_space()
        self.pos += 1  # the '['
        self.skip_space()
        if self.peek() == "]":
            return
        index = 0
        while True:
            where = f"{self.path}:{self.line} (record {index})"
            start_line, start_column = self.line, self.column(self.pos)
            end = self.value_end()
            text = self.buffer[self.pos : end]
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                line = start_line + error.lineno - 1
                column = error.colno + (start_column - 1 if error.lineno == 1 else 0)
                yield where, DataError(f"{self.path}:{line}: malformed JSON: {error.msg} at column {column}")
                return
            self.advance(end)
            yield where, record
            index += 1
            self.skip_space()
            following = self.peek()
            if following == ",":
                self.pos += 1
                self.skip_space()
                continue
            if following == "]":
                return
            problem = "the file ends" if following == "" else f"found {following!r}"
            yield (
                where,
                DataError(
                    f"{self.path}:{self.line}: malformed JSON: expected ',' or ']' after record {index - 1}, {problem}"
                ),
            )
            return

    def peek(self) -> str:
        """The character at the scanner's position ('' at the end of the file)."""
        if self.pos >= len(self.buffer) and not self.read_more():
            return ""
        return self.buffer[self.pos]

    def column(self, pos: int) -> int:
        return self.offset + pos - self.line_start + 1

    def advance(self, to: int) -> None:
        """Move to ``to``, counting the lines passed."""
        newlines = self.buffer.count("\n", self.pos, to)
        if newlines:
            self.line += newlines
            self.line_start = self.offset + self.buffer.rfind("\n", self.pos, to) + 1
        self.pos = to

    def skip_space(self) -> None:
        while True:
            self.advance(_SPACE.match(self.buffer, self.pos).end())
            if self.pos < len(self.buffer) or not self.read_more():
                return

    def read_more(self, at_least: int = CHUNK_CHARS) -> bool:
        """Append the next chunk to the buffer, dropping what was read; False at the end of the file."""
        if self.at_end:
            return False
        chunk = self.file.read(max(at_least, CHUNK_CHARS))
        if not chunk:
            self.at_end = True
            return False
        self.offset += self.pos
        self.buffer = self.buffer[self.pos :] + chunk
        self.pos = 0
        return True

    def value_end(self) -> int:
        """Where the value starting at the scanner's position ends (past the end of the buffer if it never does).

        Brackets are counted without matching their kinds, and strings skipped
        whole; the decoder then finds any real syntax error in the cut text.
        """
        while True:
            end = self.scan_value(self.pos)
            if end is not None:
                return end
            if not self.read_more(at_least=len(self.buffer) - self.pos):
                return len(self.buffer)

    def scan_value(self, start: int) -> int | None:
        """The end of the value starting at ``start``, or None if the buffer ends first."""
        buffer = self.buffer
        if start >= len(buffer):
            return None
        if buffer[start] not in '{["':
            end = _SCALAR.match(buffer, start).end()
            return end if end < len(buffer) else None
        depth = 0
        at = start
        while True:
            found = _STRUCTURE.search(buffer, at)
            if found is None:
                return None
            character, at = found.group(), found.end()
            if character == '"':
                string = _STRING_REST.match(buffer, at)
                if string is None:
                    return None
                at = string.end()
                if depth == 0:
                    return at
            elif character in "{[":
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    return at


def to_conversation(where: str, record: object) -> Conversation:
    """Validate one record (found at ``where``) into a :class:`Conversation`; a bad one raises :class:`DataError`."""
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
        field_name = "image"
    else:
        images = record.get("images", [])
        field_name = "images"
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise DataError(f"{where}: field {field_name!r} must be a path (image) or a list of paths (images)")
    return tuple(images)
