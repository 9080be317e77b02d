"""Image benchmarks: each set read from its own layout and scored as the benchmark scores (proof on shapes: ``test_image_sets_on_shapes.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from yuren_eval.image_sets import ImageSetError, read_mme, read_pope, read_scienceqa, score, yes_or_no


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    return path


def write_lines(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_pope_reads_json_lines_and_scores_per_file(tmp_path):
    image(tmp_path / "images" / "COCO_val2014_1.jpg")
    rows = [
        {"question_id": 1, "image": "COCO_val2014_1.jpg", "text": "Is there a dog in the image?", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_1.jpg", "text": "Is there a cat in the image?", "label": "no"},
    ]
    write_lines(tmp_path / "coco_pope_random.json", rows)
    write_lines(tmp_path / "coco_pope_adversarial.json", rows[:1])
    questions = read_pope(tmp_path)
    assert [(q.group, q.answer) for q in questions] == [
        ("coco_pope_adversarial", "yes"),
        *[("coco_pope_random", a) for a in ("yes", "no")],
    ]
    assert questions[0].image == tmp_path / "images" / "COCO_val2014_1.jpg"
    result = score("pope", questions, ["No", "Yes, there is.", "no"])
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["groups"] == {
        "coco_pope_adversarial": {"accuracy": 0.0, "n": 1},
        "coco_pope_random": {"accuracy": 1.0, "n": 2},
    }
    write_lines(tmp_path / "broken.json", [{"question_id": 3, "image": "x.jpg", "text": "?"}])
    with pytest.raises(ImageSetError, match=r"broken\.json, line 1: not a POPE record"):
        read_pope(tmp_path)


def test_mme_reads_both_folder_layouts_and_computes_its_score(tmp_path):
    # "artwork"-style: image and its question file side by side; "existence"-style: images/ and questions_answers_YN/.
    image(tmp_path / "artwork" / "10.jpg")
    (tmp_path / "artwork" / "10.txt").write_text("Is this by Monet?\tYes\nIs this by Goya?\tNo\n", encoding="utf-8")
    for name in ("a", "b"):
        image(tmp_path / "existence" / "images" / f"{name}.png")
        qa = tmp_path / "existence" / "questions_answers_YN" / f"{name}.txt"
        qa.parent.mkdir(parents=True, exist_ok=True)
        qa.write_text("Is there a car?\tYes\nIs there a train?\tNo\n", encoding="utf-8")
    questions = read_mme(tmp_path)
    assert [(q.group, q.image.name, q.answer) for q in questions] == [
        ("artwork", "10.jpg", "yes"), ("artwork", "10.jpg", "no"),
        ("existence", "a.png", "yes"), ("existence", "a.png", "no"),
        ("existence", "b.png", "yes"), ("existence", "b.png", "no"),
    ]  # fmt: skip
    result = score("mme", questions, ["yes", "no", "yes", "no", "yes", "yes"])
    # artwork: 2/2 right, 1/1 image fully right -> 200; existence: 3/4 right, 1/2 images -> 75 + 50.
    assert result["groups"]["artwork"]["score"] == 200.0
    assert result["groups"]["existence"]["score"] == 125.0
    assert result["score"] == 325.0


def test_scienceqa_img_keeps_test_problems_with_images_asked_with_letters(tmp_path):
    problems = {
        "1": {"question": "Which is a mammal?", "choices": ["frog", "whale"], "answer": 1, "hint": "Look.", "image": "image.png", "split": "test", "subject": "natural science"},
        "2": {"question": "Text only?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None, "split": "test", "subject": "language science"},
        "3": {"question": "Train?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png", "split": "train", "subject": "social science"},
    }  # fmt: skip
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2"], "train": ["3"]}))
    image(tmp_path / "images" / "test" / "1" / "image.png")
    (question,) = read_scienceqa(tmp_path)
    assert question.answer == "B" and question.image == tmp_path / "images" / "test" / "1" / "image.png"
    assert question.question.splitlines()[:4] == ["Context: Look.", "Which is a mammal?", "A. frog", "B. whale"]
    assert score("scienceqa", [question], ["B. whale"])["accuracy"] == 1.0
    assert score("scienceqa", [question], ["A"])["accuracy"] == 0.0


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("Yes", "yes"),
        ("no, it is blue", "no"),
        ("是", "yes"),
        ("否", "no"),
        ("不是", "no"),
        ("Nope", None),
        ("red", None),
    ],
)
def test_yes_no_is_read_from_the_first_word(answer, parsed):
    assert yes_or_no(answer) == parsed
