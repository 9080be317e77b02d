"""Conversation records read as a stream: problems located by line deep in long files, each character scanned once."""

from __future__ import annotations

import json

import pytest

from yuren_core import records
from yuren_core.records import DataError, read_conversations, read_records

GOOD = {"conversations": [{"from": "human", "value": "Hi ] } [ {"}, {"from": "gpt", "value": 'Hello \\" there\n'}]}


def long_list(tmp_path, count: int, bad: set[int]):
    """A JSON list of ``count`` records, every third spread over several lines; the lines where ``bad`` ones start."""
    lines = ["["]
    starts = {}
    for index in range(count):
        record = {"dialogue": []} if index in bad else {**GOOD, "id": index}
        text = json.dumps(record, indent=2 if index % 3 == 0 else None, ensure_ascii=False)
        starts[index] = len(lines) + 1
        lines += (text + ("," if index < count - 1 else "")).split("\n")
    lines.append("]")
    path = tmp_path / "long.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, starts


def test_bad_records_deep_in_a_long_list_are_reported_at_their_lines(tmp_path, monkeypatch):
    # Small reads, so records straddle the chunk boundaries.
    monkeypatch.setattr(records, "CHUNK_CHARS", 777)
    bad = {5, 1234, 2998}
    path, starts = long_list(tmp_path, 3000, bad)
    with pytest.raises(DataError) as error:
        for _ in read_conversations(path):
            pass
    message = str(error.value)
    assert message.splitlines()[0] == f"3 bad record(s) in {path}:"
    for index in sorted(bad):
        assert f"{path}:{starts[index]} (record {index}): missing field 'conversations'" in message


def test_a_syntax_error_deep_in_a_list_is_reported_at_its_line_and_column(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "CHUNK_CHARS", 500)
    path, starts = long_list(tmp_path, 2000, set())
    lines = path.read_text(encoding="utf-8").split("\n")
    target = starts[1501]  # a one-line record
    lines[target - 1] = lines[target - 1].replace('"from": "gpt"', '"from" "gpt"', 1)
    path.write_text("\n".join(lines), encoding="utf-8")
    column = lines[target - 1].index('"gpt"') + 1
    found = list(read_records(path))
    assert len(found) == 1502
    where, problem = found[-1]
    assert where == f"{path}:{target} (record 1501)"
    assert str(problem) == f"{path}:{target}: malformed JSON: Expecting ':' delimiter at column {column}"


def test_a_long_list_is_scanned_once(tmp_path, monkeypatch):
    """Lines are counted over each stretch of the file once, and a record is scanned again only when a read cuts it."""
    monkeypatch.setattr(records, "CHUNK_CHARS", 4096)
    path, _ = long_list(tmp_path, 4000, set())
    size = len(path.read_text(encoding="utf-8"))
    counted = []
    scanned = []
    advance, scan_value = records._ArrayScanner.advance, records._ArrayScanner.scan_value

    def counting_advance(self, to):
        counted.append(to - self.pos)
        advance(self, to)

    def counting_scan(self, start):
        end = scan_value(self, start)
        scanned.append((len(self.buffer) if end is None else end) - start)
        return end

    monkeypatch.setattr(records._ArrayScanner, "advance", counting_advance)
    monkeypatch.setattr(records._ArrayScanner, "scan_value", counting_scan)
    assert sum(1 for _ in read_conversations(path)) == 4000
    assert sum(counted) <= size
    assert sum(scanned) <= size * 1.2


def test_json_lines_report_their_line_numbers(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([json.dumps(GOOD)] * 500 + ["", json.dumps({"dialogue": []}), "{"]) + "\n")
    found = list(read_records(path))
    assert [where for where, _ in found[-2:]] == [f"{path}:502", f"{path}:503"]
    assert str(found[-1][1]).startswith(f"{path}:503: malformed JSON line: ")
    with pytest.raises(DataError, match=rf"{path}:502: missing field 'conversations'"):
        list(read_conversations(path))
