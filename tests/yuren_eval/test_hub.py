"""Image sets from the hub: each repository's parquet rows become the benchmark's own layout, read and scored."""

from __future__ import annotations

import io
import json
from pathlib import Path

import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from yuren_eval import hub
from yuren_eval.__main__ import main
from yuren_eval.image_sets import READERS, yes_or_no


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


RED, BLUE = png((200, 30, 30)), png((30, 30, 200))

# Rows as each hub repository's parquet files hold them (image: the datasets Image feature's struct).
HUB_ROWS = {
    "pope": [
        {"id": "0", "question_id": "1", "question": "Is there a dog in the image?", "answer": "yes",
         "image_source": "COCO_val2014_000000000042", "image": {"bytes": RED, "path": None}, "category": "random"},
        {"id": "1", "question_id": "2", "question": "Is there a cat in the image?", "answer": "no",
         "image_source": "COCO_val2014_000000000042", "image": {"bytes": RED, "path": None}, "category": "random"},
        {"id": "2", "question_id": "3", "question": "Is there a car in the image?", "answer": "no",
         "image_source": "COCO_val2014_000000000073", "image": {"bytes": BLUE, "path": None}, "category": "adversarial"},
    ],
    "mme": [
        {"question_id": "artwork/10002.jpg", "question": "Is this artwork by Monet? Please answer yes or no.",
         "answer": "Yes", "category": "artwork", "image": {"bytes": RED, "path": None}},
        {"question_id": "artwork/10002.jpg", "question": "Is this artwork by Goya? Please answer yes or no.",
         "answer": "No", "category": "artwork", "image": {"bytes": RED, "path": None}},
        {"question_id": "code_reasoning/0020.png", "question": "Does the code print 3?\nPlease answer yes or no.",
         "answer": "Yes", "category": "code_reasoning", "image": {"bytes": BLUE, "path": None}},
    ],
    "scienceqa": [
        {"image": {"bytes": RED, "path": None}, "question": "Which colour is shown?", "choices": ["blue", "red"],
         "answer": 1, "hint": "Look at the square.", "task": "closed choice", "grade": "grade1",
         "subject": "natural science", "topic": "colours", "category": "c", "skill": "s", "lecture": "", "solution": ""},
        {"image": None, "question": "Text only?", "choices": ["a", "b"], "answer": 0, "hint": "",
         "task": "closed choice", "grade": "grade1", "subject": "language science", "topic": "t", "category": "c",
         "skill": "s", "lecture": "", "solution": ""},
    ],
}  # fmt: skip


def fake_hub(tmp_path: Path, benchmark: str, monkeypatch) -> list[dict]:
    """A snapshot folder with ``benchmark``'s hub rows; ``snapshot_download`` returns it and records its calls."""
    snapshot = tmp_path / "hub" / benchmark / "snapshots" / "0123abcd"
    (snapshot / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(HUB_ROWS[benchmark]), snapshot / "data" / "test-00000-of-00001.parquet")
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        return str(snapshot)

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    return calls


EXPECTED = {
    "pope": [
        ("coco_pope_adversarial-3", "COCO_val2014_000000000073.jpg", "Is there a car in the image?", "no", BLUE),
        ("coco_pope_random-1", "COCO_val2014_000000000042.jpg", "Is there a dog in the image?", "yes", RED),
        ("coco_pope_random-2", "COCO_val2014_000000000042.jpg", "Is there a cat in the image?", "no", RED),
    ],
    "mme": [
        ("artwork/10002-1", "10002.jpg", "Is this artwork by Monet? Please answer yes or no.", "yes", RED),
        ("artwork/10002-2", "10002.jpg", "Is this artwork by Goya? Please answer yes or no.", "no", RED),
        ("code_reasoning/0020-1", "0020.png", "Does the code print 3? Please answer yes or no.", "yes", BLUE),
    ],
}


@pytest.mark.parametrize("benchmark", ["pope", "mme", "scienceqa"])
def test_hub_rows_become_the_benchmarks_own_layout_read_by_its_reader(benchmark, tmp_path, monkeypatch):
    calls = fake_hub(tmp_path, benchmark, monkeypatch)
    folder = hub.hub_copy(benchmark, tmp_path / "cache")
    assert calls == [
        {
            "repo_id": hub.HUB_SOURCES[benchmark].repo_id,
            "repo_type": "dataset",
            "allow_patterns": ["data/test-*.parquet"],
        }
    ]
    assert folder.parent == tmp_path / "cache"
    questions = READERS[benchmark](folder)
    if benchmark == "scienceqa":
        (question,) = questions
        assert (question.answer, question.group) == ("B", "natural science")
        assert question.question.splitlines()[:4] == [
            "Context: Look at the square.",
            "Which colour is shown?",
            "A. blue",
            "B. red",
        ]
        assert question.image.read_bytes() == RED
    else:
        got = [(q.id, q.image.name, q.question, q.answer, q.image.read_bytes()) for q in questions]
        assert got == EXPECTED[benchmark]
    # Converted once: the next run reads the cached copy.
    (tmp_path / "hub").rename(tmp_path / "gone")
    assert hub.hub_copy(benchmark, tmp_path / "cache") == folder


@pytest.mark.slow
def test_evaluate_without_data_dir_scores_the_hub_copy(fused_model_dir, tmp_path, monkeypatch):
    calls = fake_hub(tmp_path, "pope", monkeypatch)
    out = tmp_path / "out"
    code = main(
        [
            str(fused_model_dir), "--tasks", "pope", "--cache_dir", str(tmp_path / "cache"),
            "--output_dir", str(out), "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0
    assert [call["repo_id"] for call in calls] == ["lmms-lab/POPE"]
    report = json.loads((out / "pope.json").read_text())
    labels = {"coco_pope_random-1": "yes", "coco_pope_random-2": "no", "coco_pope_adversarial-3": "no"}
    assert set(report["answers"]) == set(labels) and report["n"] == 3
    right = sum(yes_or_no(answer) == labels[id] for id, answer in report["answers"].items())
    assert report["accuracy"] == right / 3


def test_offline_without_data_dir_says_to_pass_data_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "yuren"}')
    with pytest.raises(SystemExit) as exit_info:
        main([str(model), "--tasks", "pope", "--cache_dir", str(tmp_path / "cache")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "lmms-lab/POPE" in error and "--data_dir" in error and "pope/" in error
