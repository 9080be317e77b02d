"""Proof on shapes: the tiny pipeline's model answers an image set's yes/no questions from the image.

Kept apart from the readers' tests (``test_image_sets.py``): every test here needs the trained tiny pipeline, so the
suite runs this file after the pipeline is built and the rest meanwhile.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from make_demo_model.pipeline import HELD_OUT_SEED, colour_accuracy
from make_tiny_model.shapes import COLOURS, write_dataset, yes_no_question
from yuren_core.chatml import render
from yuren_core.loading import load_model
from yuren_core.vision import ImageProcessor
from yuren_eval.__main__ import main


def shapes_pope(folder: Path) -> list[dict]:
    """A POPE-format set from held-out shapes: per image, whether it is its own colour (yes) and another one (no)."""
    data = write_dataset(folder / "shapes", num_images=30, seed=HELD_OUT_SEED)
    captions = json.loads(data["captions"].read_text())
    rows = []
    for number, record in enumerate(captions):
        colour = record["truth"]["colour"]
        other = sorted(set(COLOURS) - {colour})[number % (len(COLOURS) - 1)]
        # Copied into POPE's images/ folder under the record's file name.
        target = folder / "pope" / "images" / Path(record["image"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((folder / "shapes" / record["image"]).read_bytes())
        for asked, label in ((colour, "yes"), (other, "no")):
            rows.append(
                {"question_id": len(rows), "image": target.name, "text": yes_no_question(asked, "en"), "label": label}
            )
    (folder / "pope" / "shapes_pope.json").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


@torch.no_grad()
def independent_answers(model_dir: Path, folder: Path, rows: list[dict], *, zeroed: bool) -> list[str]:
    """Greedy answers computed here, in the LLaVA-string layout of the training data: each one's first word."""
    model, tokenizer, _ = load_model(model_dir)
    processor = ImageProcessor.from_config(model.config)
    if zeroed:
        model.mm_projector.register_forward_hook(lambda module, inputs, output: output * 0)
    words = []
    for row in rows:
        turns = [{"from": "human", "value": f"<image>\n{row['text']}"}]
        ids = render(tokenizer, turns, image_seq_len=model.config.image_seq_len, add_generation_prompt=True).input_ids
        pixels = processor([folder / "pope" / "images" / row["image"]])
        output = model.generate(input_ids=torch.tensor([ids]), pixel_values=pixels, max_new_tokens=8, do_sample=False)
        answer = tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True).lower().split()
        words.append(answer[0].strip(",.") if answer else "")
    return words


def share_right(words: list[str], rows: list[dict]) -> float:
    return sum(word == row["label"] for word, row in zip(words, rows, strict=True)) / len(rows)


@pytest.mark.slow
def test_the_shapes_trained_model_answers_yes_no_from_the_image_and_evaluate_reports_it(tiny_pipeline, tmp_path):
    _, run = tiny_pipeline
    rows = shapes_pope(tmp_path)
    out = tmp_path / "out"
    code = main(
        [
            str(run.final), "--tasks", "pope", "--data_dir", str(tmp_path), "--output_dir", str(out),
            "--zero_image_features", "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "pope.json").read_text())
    assert report["n"] == len(rows) == 60
    seen = independent_answers(run.final, tmp_path, rows, zeroed=False)
    blind = independent_answers(run.final, tmp_path, rows, zeroed=True)
    # What evaluate reports is a count of the model's own answers, with the images and with their features zeroed.
    assert report["accuracy"] == share_right(seen, rows)
    assert report["zeroed_image_features"]["accuracy"] == share_right(blind, rows)
    assert report["accuracy"] >= 0.9, report["answers"]
    # Blind, the model can only guess: about half of this balanced set. It still takes the question for a yes/no
    # one, mostly (without image features it is off what it was trained on: some answers name a colour).
    assert 0.3 <= report["zeroed_image_features"]["accuracy"] <= 0.7
    assert sum(word in ("yes", "no") for word in blind) >= 0.75 * len(blind), blind
    assert "| image features zeroed |" in (out / "pope.md").read_text()
    # The yes/no run kept the colour naming that stage 3 taught.
    assert colour_accuracy(run.final, tmp_path / "colour") >= 0.9
