"""SFT data: conversation files tokenized into Arrow rows, packed, cached; in bounded memory, on several cores.

Records are read and validated as a stream (:mod:`yuren_core.records`: file,
line, record and field named for every problem, all listed before any training)
and written to an Arrow file in batches. ``datasets`` then tokenizes them in
``num_proc`` processes (``Dataset.map``), each rendering a batch of conversations
through :func:`yuren_core.chatml.render_many`; with ``packing`` the rows are
packed a batch of rows at a time. Only a batch is ever held in memory, plus one
length per conversation for packing. Python's cyclic garbage collector is kept
off the objects the workers inherit and paused while a batch is rendered: it
cost a third of the tokenizing time, and a copy of the parent's heap in every
worker (see ``benchmarks/README.md``, Data).

Conversations left without a supervised token (no assistant text, or all of it
cut off by truncation) are dropped and counted; they are never trained on by
copying prompt tokens into the labels, as upstream did.

Tokenized rows are cached as one Arrow file (``rows.arrow``, opened with
``datasets.Dataset.from_file``) beside their statistics, keyed by the file's
content, the tokenizer, the renderer's source and the settings, so a changed
input never meets a stale cache. The tokenized shards are read back once, a
batch at a time, by reading rather than memory-mapping them, so that pass adds
no mapped pages that grow with the file to the process's memory.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import mmap
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from yuren_core import chatml
from yuren_core.atomic import atomic_directory
from yuren_core.chatml import (
    IMAGE,
    USER,
    ChatEncoder,
    ConversationError,
    Image,
    ImageBlockTruncated,
    Message,
    render_many,
    truncated,
)
from yuren_core.records import Conversation, DataError, ErrorReport, batches, no_such_file, read_conversations

from .packing import assign_bins

logger = logging.getLogger(__name__)

# Bump when the layout of the cached rows changes.
CACHE_FORMAT = 3
# Conversations per batch: what one worker renders, and writes to Arrow, at a time.
BATCH_SIZE = 1000
# Packed rows per batch. A row read through a map maps far more than the row (3,000 random rows of a 1.4 GiB rows
# file mapped 1.26 GiB of it, measured), so the pages a batch maps, dropped after it, are bounded by this.
PACKED_BATCH_SIZE = 100
# A worker process is started per this many conversations at most: a small file is not worth the start-up.
RECORDS_PER_WORKER = 2000

# What tokenizing did with each conversation (the ``outcome`` column of the tokenized records).
ROWS_FILE = "rows.arrow"
KEPT, DROPPED_UNSUPERVISED, DROPPED_IMAGE_CUT, FAILED = "kept", "dropped_unsupervised", "dropped_image_cut", "failed"


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


def default_num_workers() -> int:
    """Processes that tokenize by default: the cores this process may use, at most 8."""
    return min(len(os.sched_getaffinity(0)), 8)


def image_position_of(conversations: Iterable[Conversation], default: str) -> tuple[str, Counter]:
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
    conversations: Iterable[Conversation],
    tokenizer,
    *,
    max_length: int,
    image_seq_len: int | None = None,
) -> tuple[dict[str, list], TokenizeStats]:
    """Render conversations (held in memory) to columns ``input_ids``, ``labels``, ``length``, ``images``.

    Conversations longer than ``max_length`` are truncated (labels cut with the
    ids, so they stay aligned). A conversation without a supervised token left,
    or one whose truncation would cut an image block, is dropped and counted.
    Conversations that cannot be rendered (a number of images that differs
    from the image paths named) raise :class:`DataError` listing them.
    :func:`load_sft_dataset` does the same for a file, a batch at a time.
    """
    records = _record_columns(conversations)
    rows = tokenize_records(records, tokenizer, max_length=max_length, image_seq_len=image_seq_len)
    stats = TokenizeStats(conversations=len(rows["outcome"]))
    errors = ErrorReport()
    kept = []
    for index, outcome in enumerate(rows["outcome"]):
        _count(stats, errors, *(rows[name][index] for name in OUTCOME_COLUMNS))
        if outcome == KEPT:
            kept.append(index)
    if errors.count:
        raise DataError(errors.message(f"{errors.count} conversation(s) cannot be tokenized"))
    stats.rows = stats.kept
    columns = {name: [rows[name][i] for i in kept] for name in ("input_ids", "labels", "length", "images")}
    return columns, stats


# The columns of the tokenized records that :func:`_count` reads.
OUTCOME_COLUMNS = ("outcome", "truncated", "error", "length", "supervised")


def _count(
    stats: TokenizeStats, errors: ErrorReport, outcome: str, truncated: bool, error, length: int, supervised: int
) -> None:
    """Add one tokenized conversation to the statistics (or its problem to ``errors``)."""
    # A truncated conversation counts as truncated whether it is then kept or dropped.
    stats.truncated += truncated
    if outcome == FAILED:
        errors.add(error)
    elif outcome == KEPT:
        stats.kept += 1
        stats.tokens += length
        stats.supervised_tokens += supervised
    elif outcome == DROPPED_UNSUPERVISED:
        stats.dropped_unsupervised += 1
    else:
        stats.dropped_image_cut += 1


def _record_columns(conversations: Iterable[Conversation]) -> dict[str, list]:
    """Conversations as the columns of the records file: ``source``, ``roles``, ``parts`` (None for an image), ``images``."""
    columns: dict[str, list] = {"source": [], "roles": [], "parts": [], "images": []}
    for conversation in conversations:
        columns["source"].append(conversation.source)
        columns["roles"].append([m.role for m in conversation.messages])
        columns["parts"].append([[None if isinstance(p, Image) else p for p in m.parts] for m in conversation.messages])
        columns["images"].append(list(conversation.images))
    return columns


def _messages(roles: list[str], parts: list[list[str | None]]) -> list[Message]:
    return [
        Message(role, tuple(IMAGE if p is None else p for p in pieces))
        for role, pieces in zip(roles, parts, strict=True)
    ]


def tokenize_records(records: dict[str, list], tokenizer, *, max_length: int, image_seq_len: int | None) -> dict:
    """Tokenize a batch of records (the columns :func:`_record_columns` writes); one output row per record.

    Each row says what became of its conversation in ``outcome`` (and, for a
    conversation that cannot be rendered, why in ``error``); rows that are not
    kept have empty ids. ``tokenizer`` may be a :class:`~yuren_core.chatml.ChatEncoder`.
    """
    with _cycle_collector_paused():
        encoder = ChatEncoder.of(tokenizer)
        conversations = [_messages(r, p) for r, p in zip(records["roles"], records["parts"], strict=True)]
        rendered = render_many(encoder, conversations, image_seq_len=image_seq_len)
        out: dict[str, list] = {name: [] for name in _tokenized_features()}
        for source, images, full in zip(records["source"], records["images"], rendered, strict=True):
            outcome, truncated, error, row = _outcome(source, images, full, max_length, encoder.ids)
            out["outcome"].append(outcome)
            out["truncated"].append(truncated)
            out["error"].append(error)
            out["input_ids"].append(row.input_ids if row else [])
            out["labels"].append(row.labels if row else [])
            out["length"].append(len(row.input_ids) if row else 0)
            out["images"].append(images if row else [])
            out["seq_lengths"].append([len(row.input_ids)] if row else [])
            out["supervised"].append(row.num_supervised if row else 0)
        return out


def _outcome(source: str, images: list[str], full, max_length: int, ids):
    """``(outcome, whether truncated, error, rendered row or None)`` for one conversation rendered in full."""
    if isinstance(full, ImageBlockTruncated):
        return DROPPED_IMAGE_CUT, False, None, None
    if isinstance(full, ConversationError):
        return FAILED, False, f"{source}: field 'conversations', {full}", None
    if full.num_images != len(images):
        return (
            FAILED,
            False,
            f"{source}: the conversation has {full.num_images} image placeholder(s) but names "
            f"{len(images)} image path(s) in 'image'/'images'",
            None,
        )
    try:
        row = truncated(full, max_length, ids)
    except ImageBlockTruncated:
        return DROPPED_IMAGE_CUT, False, None, None
    if row.num_supervised == 0:
        return DROPPED_UNSUPERVISED, row is not full, None, None
    return KEPT, row is not full, None, row


def load_sft_dataset(
    path: str | os.PathLike,
    tokenizer,
    *,
    max_length: int,
    packing: bool = False,
    image_seq_len: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
) -> tuple[datasets.Dataset, TokenizeStats]:
    """Read, validate, tokenize (and with ``packing`` pack) a conversation file, through a cache.

    Returns the rows as a ``datasets.Dataset`` (columns ``input_ids``,
    ``labels``, ``length``, ``images``, ``seq_lengths``) and the statistics of
    the tokenization. ``seq_lengths`` lists the length of each conversation in
    a row: one entry without packing. Tokenizing runs in up to ``num_proc``
    processes (default :func:`default_num_workers`); the rows do not depend on it.
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
        return datasets.Dataset.from_file(str(cached / ROWS_FILE)), stats

    cache_root.mkdir(parents=True, exist_ok=True)
    # Written beside the final place and renamed into it, so a crash never leaves a half cache behind; the
    # intermediate Arrow files (records, tokenized rows) live in a scratch folder removed either way.
    with atomic_directory(cached) as staging, tempfile.TemporaryDirectory(dir=cache_root, prefix=".work-") as work:
        records = _write_records(path, Path(work) / "records.arrow")
        workers = max(1, min(num_proc or default_num_workers(), len(records) // RECORDS_PER_WORKER))
        with _inherited_heap_frozen():
            tokenized = records.map(
                tokenize_records,
                batched=True,
                batch_size=BATCH_SIZE,
                writer_batch_size=BATCH_SIZE,
                remove_columns=records.column_names,
                features=_tokenized_features(),
                # Built once here and sent to each worker: building it copies the tokenizer.
                fn_kwargs={
                    "tokenizer": ChatEncoder(tokenizer),
                    "max_length": max_length,
                    "image_seq_len": image_seq_len,
                },
                num_proc=workers if workers > 1 else None,
                cache_file_name=str(Path(work) / "tokenized.arrow"),
                new_fingerprint=key[:32] + "-tokenized",
                desc=f"tokenizing {path.name}",
            )
        shards = [Path(f["filename"]) for f in tokenized.cache_files]
        # Unmapped now: the pages the tokenizing read from them would otherwise stay counted to this process.
        del tokenized, records
        kept_target = Path(work) / "kept.arrow" if packing else staging / ROWS_FILE
        stats = _kept_rows(path, shards, kept_target)
        if stats.rows == 0:
            raise DataError(f"{path}: no conversation has a supervised token; nothing to train on")
        if packing:
            stats.rows = _packed(kept_target, max_length, staging / ROWS_FILE)
        (staging / "yuren_stats.json").write_text(json.dumps(asdict(stats)))
    return datasets.Dataset.from_file(str(cached / ROWS_FILE)), stats


def _write_records(path: Path, target: Path) -> datasets.Dataset:
    """Stream the validated conversations of ``path`` into the Arrow file ``target``, a batch at a time."""
    with _arrow_writer(target, _record_features()) as write, _cycle_collector_paused():
        for batch in batches(read_conversations(path), BATCH_SIZE):
            write(_record_columns(batch))
    return datasets.Dataset.from_file(str(target))


@contextmanager
def _inherited_heap_frozen() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects alive now, for the block (``gc.freeze``).

    A forked worker shares this process's pages until it writes to one, and a
    collection in the worker writes to every object it walks; without this, the
    first full collection in each worker copies the whole inherited heap (some
    hundreds of MiB of torch and transformers objects). Python's documentation
    advises freezing before forking for this reason.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block (reference counting still frees memory).

    Reading and tokenizing allocate millions of small lists and objects, and no
    reference cycle that must be freed before the block ends; each burst of
    allocations would start a collection that walks every live object again.
    Measured on text data: a third of the tokenizing time. Cycles made inside
    the block are freed by the first collection after it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _arrow_writer(target: Path, features: datasets.Features) -> Iterator:
    """A function writing columns (a dict of lists, or a ``pyarrow.Table``) as a batch of the Arrow file ``target``."""
    schema = features.arrow_schema
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:

        def write(columns) -> None:
            table = columns if isinstance(columns, pa.Table) else pa.Table.from_pydict(columns, schema=schema)
            writer.write_table(table)

        yield write


def _kept_rows(path: Path, shards: list[Path], target: Path) -> TokenizeStats:
    """Count what became of every tokenized record and write the kept rows to ``target``; return the statistics.

    Reads the tokenized ``shards`` (Arrow streams, in order) a batch at a time, into memory that is freed with
    the batch. Raises :class:`DataError` if any record failed.
    """
    stats = TokenizeStats()
    errors = ErrorReport()
    columns = list(_features())
    with _arrow_writer(target, _features()) as write:
        for shard in shards:
            with pa.OSFile(str(shard)) as source:
                for batch in pa.ipc.open_stream(source):
                    for values in zip(*(batch.column(name).to_pylist() for name in OUTCOME_COLUMNS), strict=True):
                        stats.conversations += 1
                        _count(stats, errors, *values)
                    kept = pa.Table.from_batches([batch]).filter(pc.equal(batch.column("outcome"), KEPT))
                    write(kept.select(columns))
    if errors.count:
        raise DataError(errors.message(f"{errors.count} conversation(s) in {path} cannot be tokenized"))
    stats.rows = stats.kept
    return stats


def _packed(kept: Path, max_length: int, target: Path) -> int:
    """Write the rows of the Arrow stream ``kept`` packed into rows of at most ``max_length`` tokens to ``target``.

    Returns how many packed rows. The bins are :func:`~yuren_trainer.packing.assign_bins`'; their members lie
    anywhere in the file, so it is read through a memory map. Each page read would stay counted to this process
    until the end (file-backed, but growing with the file), so after each batch of packed rows
    (:data:`PACKED_BATCH_SIZE`) the map's pages are dropped from it (``madvise``); they stay in the page cache,
    to be mapped again if needed.
    """
    with open(kept, "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    # Not closed by hand: it unmaps itself when the last Arrow view of it goes (on an error, with the traceback).
    rows = pa.ipc.open_stream(pa.py_buffer(mapped)).read_all()
    bins = assign_bins(rows.column("length").to_pylist(), max_length)
    with _arrow_writer(target, _features()) as write:
        for batch in batches(bins, PACKED_BATCH_SIZE):
            # Row by row: Table.take would first join the columns' chunks, copying the whole file into memory.
            batch_rows = pa.concat_tables([rows.slice(i, 1) for members in batch for i in members])
            write(_packed_table(batch_rows, batch))
            mapped.madvise(mmap.MADV_DONTNEED)
    return len(bins)


def _packed_table(table: pa.Table, bins: list[list[int]]) -> pa.Table:
    """Concatenate the rows of ``table`` (the members of ``bins``, in order) bin by bin into one row per bin."""
    lengths = table.column("length").to_pylist()
    member_offsets = [0]
    for members in bins:
        member_offsets.append(member_offsets[-1] + len(members))

    def joined(name: str) -> pa.Array:
        column = table.column(name).combine_chunks()
        per_row = column.value_lengths().to_pylist()
        offsets = [0]
        for start, end in zip(member_offsets, member_offsets[1:], strict=False):
            offsets.append(offsets[-1] + sum(per_row[start:end]))
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), column.flatten())

    seq_lengths = pa.ListArray.from_arrays(pa.array(member_offsets, pa.int32()), pa.array(lengths, pa.int32()))
    return pa.table(
        {
            "input_ids": joined("input_ids"),
            "labels": joined("labels"),
            "length": pa.array(
                [sum(lengths[s:e]) for s, e in zip(member_offsets, member_offsets[1:], strict=False)], pa.int32()
            ),
            "images": joined("images"),
            "seq_lengths": seq_lengths,
        }
    )


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


def _record_features() -> datasets.Features:
    strings = datasets.Sequence(datasets.Value("string"))
    return datasets.Features(
        {"source": datasets.Value("string"), "roles": strings, "parts": datasets.Sequence(strings), "images": strings}
    )


def _tokenized_features() -> datasets.Features:
    return datasets.Features(
        {
            **_features(),
            "supervised": datasets.Value("int32"),
            "outcome": datasets.Value("string"),
            "truncated": datasets.Value("bool"),
            "error": datasets.Value("string"),
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
