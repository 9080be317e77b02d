"""atomic_directory and atomic_write_text: an output appears complete or not at all."""

from pathlib import Path

import pytest

from yuren_core.atomic import atomic_directory, atomic_write_text


def test_success_replaces_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_keeps_what_was_there_and_leaves_no_partial(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as staging:
        (staging / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert (target / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "fresh"):
        raise RuntimeError("crash")
    assert not (tmp_path / "fresh").exists()


def test_atomic_write_text_replaces_whole_or_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "report.json"
    atomic_write_text(target, "old 羽人")
    assert target.read_text(encoding="utf-8") == "old 羽人"

    def interrupted(self, other):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new")
    assert target.read_text(encoding="utf-8") == "old 羽人"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]
