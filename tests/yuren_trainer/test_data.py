"""Reading, validating, tokenizing and caching SFT conversation files."""

from __future__ import annotations

import copy
import gc
import json
from dataclasses import asdict

import pytest
from repo_helpers import UPSTREAM_SAMPLE
from trainer_helpers import MEMORY_CONVERSATIONS, write_json

from yuren_core import records
from yuren_core.chatml import render
from yuren_core.constants import IGNORE_INDEX
from yuren_core.records import DataError
from yuren_trainer import data
from yuren_trainer.data import TokenizeStats, load_sft_dataset, tokenize
from yuren_trainer.packing import pack_rows


def read_conversations(path):
    return list(records.read_conversations(path))


LICENSE_NOTE = {"__comment__": "license note, not a conversation"}


def test_json_list_and_json_lines_read_the_same(tmp_path):
    listed = write_json(tmp_path / "list.json", [LICENSE_NOTE, *MEMORY_CONVERSATIONS])
    lines = tmp_path / "lines.jsonl"
    lines.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in MEMORY_CONVERSATIONS) + "\n\n")
    from_list, from_lines = read_conversations(listed), read_conversations(lines)
    assert len(from_list) == len(MEMORY_CONVERSATIONS)
    assert [c.messages for c in from_list] == [c.messages for c in from_lines]
    assert from_list[0].source == f"{listed}:1 (record 1)"
    assert from_lines[2].source == f"{lines}:3"


def test_upstream_sample_reads_without_its_comment_record(upstream_conversations, tokenizer, tmp_path):
    conversations = read_conversations(UPSTREAM_SAMPLE)
    assert len(conversations) == len(upstream_conversations)
    columns, stats = tokenize(conversations[:20], tokenizer, max_length=4096)
    assert stats.kept == 20 and stats.dropped_unsupervised == 0


def bad_file(tmp_path, records) -> str:
    """A JSON list written one record per line, so record i sits on line i + 2."""
    path = tmp_path / "bad.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    return str(path)


def test_every_bad_record_is_reported_with_file_line_record_and_field(tmp_path):
    good = MEMORY_CONVERSATIONS[0]
    path = bad_file(
        tmp_path,
        [
            good,
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}]},
            {"dialogue": []},
            {"conversations": [{"from": "human"}]},
            ["not", "an", "object"],
        ],
    )
    with pytest.raises(DataError) as error:
        read_conversations(path)
    message = str(error.value)
    assert "4 bad record(s)" in message
    assert f"{path}:3 (record 1): field 'conversations', turn 1: unknown role 'bot'" in message
    assert f"{path}:4 (record 2): missing field 'conversations'" in message
    assert f"{path}:5 (record 3): field 'conversations', turn 0: field 'value' must be a string" in message
    assert f"{path}:6 (record 4): expected an object" in message


def test_malformed_json_is_reported_with_its_line(tmp_path):
    lines = tmp_path / "broken.jsonl"
    lines.write_text(json.dumps(MEMORY_CONVERSATIONS[0]) + "\n" + '{"conversations": [\n')
    with pytest.raises(DataError, match=rf"{lines}:2: malformed JSON line"):
        read_conversations(lines)
    listed = tmp_path / "broken.json"
    listed.write_text("[\n" + json.dumps(MEMORY_CONVERSATIONS[0]) + ",\n{oops}\n]")
    with pytest.raises(DataError, match=rf"{listed}:3: malformed JSON"):
        read_conversations(listed)


def test_image_paths_must_match_the_placeholders(tmp_path, tokenizer):
    record = {
        "image": "pictures/cat.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"},
            {"from": "gpt", "value": "A cat."},
        ],
    }
    conversations = read_conversations(write_json(tmp_path / "images.json", [record]))
    columns, _ = tokenize(conversations, tokenizer, max_length=512, image_seq_len=4)
    assert columns["images"] == [["pictures/cat.png"]]
    unnamed = {"conversations": record["conversations"]}
    with pytest.raises(DataError, match="1 image placeholder"):
        tokenize(
            read_conversations(write_json(tmp_path / "unnamed.json", [unnamed])),
            tokenizer,
            max_length=512,
            image_seq_len=4,
        )


def test_conversations_without_supervised_tokens_are_dropped_and_counted(tmp_path, tokenizer):
    long_prompt = "word " * 200
    records = [
        MEMORY_CONVERSATIONS[0],
        {"conversations": [{"from": "system", "value": "Be nice."}, {"from": "human", "value": "No answer follows."}]},
        {"conversations": [{"from": "human", "value": long_prompt}, {"from": "gpt", "value": "Cut off entirely."}]},
    ]
    columns, stats = tokenize(read_conversations(write_json(tmp_path / "d.json", records)), tokenizer, max_length=64)
    # The answer cut off entirely still ends on a supervised eos, as upstream's cut made it; the unanswered one goes.
    assert stats.dropped_unsupervised == 1
    assert stats.kept == len(columns["input_ids"]) == 2
    assert [label for label in columns["labels"][1] if label != IGNORE_INDEX] == [tokenizer.eos_token_id]
    # The kept row is the real conversation, its prompt unsupervised: no copying of prompt tokens into labels.
    expected = render(tokenizer, MEMORY_CONVERSATIONS[0]["conversations"])
    assert columns["labels"][0] == expected.labels
    assert columns["labels"][0][0] == IGNORE_INDEX


def test_truncation_keeps_labels_aligned(tmp_path, tokenizer):
    conversation = MEMORY_CONVERSATIONS[1]
    full = render(tokenizer, conversation["conversations"])
    limit = len(full.input_ids) - 5
    columns, stats = tokenize(
        read_conversations(write_json(tmp_path / "t.json", [conversation])), tokenizer, max_length=limit
    )
    assert stats.truncated == 1
    # Upstream's cut: limit - 1 tokens, the last overwritten by the eos, labelled.
    eos = tokenizer.eos_token_id
    assert columns["input_ids"][0] == [*full.input_ids[: limit - 2], eos]
    assert columns["labels"][0] == [*full.labels[: limit - 2], eos]
    assert columns["length"][0] == limit - 1


def test_tokenized_data_is_cached_and_a_changed_file_misses(tmp_path, tokenizer, monkeypatch):
    path = write_json(tmp_path / "train.json", MEMORY_CONVERSATIONS)
    cache = tmp_path / "cache"
    first, stats = load_sft_dataset(path, tokenizer, max_length=128, cache_dir=cache)
    assert len(first) == stats.rows == 4
    assert first[0]["seq_lengths"] == [first[0]["length"]]

    def must_not_read(path):
        raise AssertionError(f"{path} was read again despite the cache")

    monkeypatch.setattr(data, "read_conversations", must_not_read)
    again, again_stats = load_sft_dataset(path, tokenizer, max_length=128, cache_dir=cache)
    assert again["input_ids"] == first["input_ids"] and again_stats == stats

    write_json(path, MEMORY_CONVERSATIONS[:2])
    with pytest.raises(AssertionError, match="read again"):
        load_sft_dataset(path, tokenizer, max_length=128, cache_dir=cache)
    with pytest.raises(AssertionError, match="read again"):
        load_sft_dataset(path, tokenizer, max_length=128, cache_dir=cache, packing=True)


def test_packed_dataset_rows_hold_several_conversations(tmp_path, tokenizer):
    path = write_json(tmp_path / "train.json", MEMORY_CONVERSATIONS * 3)
    dataset, stats = load_sft_dataset(path, tokenizer, max_length=128, cache_dir=tmp_path / "cache", packing=True)
    assert stats.kept == 12 and stats.rows == len(dataset) < 12
    assert sum(len(row["seq_lengths"]) for row in dataset) == 12
    assert all(sum(row["seq_lengths"]) == row["length"] == len(row["input_ids"]) <= 128 for row in dataset)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"conversations": [{"from": "human", "value": "caf\xe9"}]}]'.encode("latin-1"))
    with pytest.raises(DataError, match=rf"^{path}: not UTF-8 text \("):
        read_conversations(path)


@pytest.mark.parametrize("text", ["[]", "[ \n ]", "", "\n\n", json.dumps([LICENSE_NOTE])], ids=repr)
def test_a_file_without_conversations_is_refused(tmp_path, text):
    path = tmp_path / "empty.json"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"^{path}: no conversations found$"):
        read_conversations(path)


def test_a_file_whose_every_conversation_is_dropped_is_refused(tmp_path, tokenizer):
    unanswered = {"conversations": [{"from": "human", "value": "No answer follows."}]}
    path = write_json(tmp_path / "unanswered.json", [unanswered, unanswered])
    with pytest.raises(DataError, match=rf"^{path}: no conversation has a supervised token; nothing to train on$"):
        load_sft_dataset(path, tokenizer, max_length=128, cache_dir=tmp_path / "cache")
    assert not list(tmp_path.glob("cache/*")), "a cache entry was written for an unusable file"


def test_the_error_list_stops_at_the_cap_and_counts_the_rest(tmp_path):
    count = records.MAX_REPORTED_ERRORS + 7
    path = bad_file(tmp_path, [{"dialogue": []}] * count)
    with pytest.raises(DataError) as error:
        read_conversations(path)
    lines = str(error.value).splitlines()
    assert lines[0] == f"{count} bad record(s) in {path}:"
    assert len(lines) == 1 + records.MAX_REPORTED_ERRORS + 1
    assert (
        lines[records.MAX_REPORTED_ERRORS]
        == f"  {path}:{records.MAX_REPORTED_ERRORS + 1} (record {records.MAX_REPORTED_ERRORS - 1}): missing field 'conversations'"
    )
    assert lines[-1] == "  ... and 7 more"


def test_image_and_images_together_are_refused(tmp_path):
    record = {**MEMORY_CONVERSATIONS[0], "image": "a.png", "images": ["a.png"]}
    path = bad_file(tmp_path, [record])
    with pytest.raises(
        DataError, match=rf"{path}:2 \(record 0\): give either field 'image' or field 'images', not both"
    ):
        read_conversations(path)


@pytest.mark.parametrize(
    "change",
    [{"max_length": 64}, {"image_seq_len": 8}, {"tokenizer": "extended"}],
    ids=["max_length", "image_seq_len", "tokenizer"],
)
def test_a_changed_setting_or_tokenizer_misses_the_cache(tmp_path, tokenizer, monkeypatch, change):
    path = write_json(tmp_path / "train.json", MEMORY_CONVERSATIONS)
    cache = tmp_path / "cache"
    settings = {"max_length": 128, "image_seq_len": 4}
    load_sft_dataset(path, tokenizer, cache_dir=cache, **settings)

    def must_not_read(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(data, "read_conversations", must_not_read)
    load_sft_dataset(path, tokenizer, cache_dir=cache, **settings)  # the same settings hit
    other = tokenizer
    if change.get("tokenizer"):
        other = copy.deepcopy(tokenizer)
        other.add_tokens(["<|new_token|>"])
    changed = {**settings, **{k: v for k, v in change.items() if k != "tokenizer"}}
    with pytest.raises(AssertionError, match="read again"):
        load_sft_dataset(path, other, cache_dir=cache, **changed)


def test_tokenizing_in_two_processes_gives_the_rows_and_stats_of_one(tmp_path, tokenizer, monkeypatch):
    # Batches of 3 and a worker per 2 records, so that both processes tokenize several batches; packed rows are
    # written (and their pages dropped) 2 at a time.
    monkeypatch.setattr(data, "BATCH_SIZE", 3)
    monkeypatch.setattr(data, "RECORDS_PER_WORKER", 2)
    monkeypatch.setattr(data, "PACKED_BATCH_SIZE", 2)
    unanswered = {"conversations": [{"from": "human", "value": "No answer follows."}]}
    # Truncated: the answer cut, and the answer cut off entirely; both kept, ending on the supervised eos upstream's
    # truncation forces.
    cut = {"conversations": [{"from": "human", "value": "word " * 5}, {"from": "gpt", "value": "answer " * 120}]}
    cut_off = {"conversations": [{"from": "human", "value": "word " * 40}, {"from": "gpt", "value": "answer " * 40}]}
    path = write_json(tmp_path / "train.json", [*MEMORY_CONVERSATIONS, unanswered, cut, cut_off] * 4)
    in_memory, expected_stats = tokenize(read_conversations(path), tokenizer, max_length=64)
    assert (expected_stats.kept, expected_stats.dropped_unsupervised, expected_stats.truncated) == (24, 4, 8)
    for packing in (False, True):
        loaded = {}
        for num_proc in (1, 2):
            dataset, stats = load_sft_dataset(
                path, tokenizer, max_length=64, packing=packing, num_proc=num_proc, cache_dir=tmp_path / f"c{num_proc}"
            )
            loaded[num_proc] = dataset.to_dict(), stats
        assert loaded[1] == loaded[2]
        rows, stats = loaded[1]
        expected = (
            pack_rows(in_memory, 64) if packing else {**in_memory, "seq_lengths": [[n] for n in in_memory["length"]]}
        )
        assert rows == expected
        assert stats == TokenizeStats(**{**asdict(expected_stats), "rows": len(expected["input_ids"])})
        assert packing == (len(rows["input_ids"]) < expected_stats.kept)


def test_tokenizing_pauses_the_cycle_collector_and_leaves_it_as_it_was(tmp_path, tokenizer, monkeypatch):
    path = write_json(tmp_path / "train.json", MEMORY_CONVERSATIONS)
    while_rendering = []
    real_render_many = data.render_many

    def render_many(*args, **kwargs):
        while_rendering.append((gc.isenabled(), gc.get_freeze_count() > 0))
        return real_render_many(*args, **kwargs)

    monkeypatch.setattr(data, "render_many", render_many)
    load_sft_dataset(path, tokenizer, max_length=64, num_proc=1, cache_dir=tmp_path / "on")
    # Paused, and the objects from before frozen (what forked workers inherit), while rendering (the speed-up and
    # the shared memory); running again over every object for the training that follows.
    assert while_rendering == [(False, True)]
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        load_sft_dataset(path, tokenizer, max_length=64, num_proc=1, cache_dir=tmp_path / "off")
        # A caller that had turned it off does not find it on.
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_every_conversation_that_cannot_be_tokenized_is_listed(tmp_path, tokenizer):
    turns = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]
    path = bad_file(tmp_path, [MEMORY_CONVERSATIONS[0], {"conversations": turns}, {"conversations": turns}])
    with pytest.raises(DataError) as error:
        load_sft_dataset(path, tokenizer, max_length=128, image_seq_len=4, cache_dir=tmp_path / "cache")
    lines = str(error.value).splitlines()
    assert lines[0] == f"2 conversation(s) in {path} cannot be tokenized:"
    assert lines[1:] == [
        f"  {path}:{line} (record {line - 2}): the conversation has 1 image placeholder(s) but names 0 image path(s) "
        "in 'image'/'images'"
        for line in (3, 4)
    ]
