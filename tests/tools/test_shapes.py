"""The synthetic shapes data: ground truth that matches the pixels, reproducible by seed."""

import datetime
import json

from PIL import Image

from make_tiny_model.shapes import (
    COLOURS,
    colour_answer,
    vocabulary_lines,
    write_dataset,
    write_yes_no_dataset,
    yes_no_question,
)


def test_dataset_records_match_their_images(tmp_path):
    paths = write_dataset(tmp_path, num_images=30, seed=3)
    captions = json.loads(paths["captions"].read_text())
    conversations = json.loads(paths["conversations"].read_text())
    assert len(captions) == 30 and len(conversations) == 90
    for record in conversations:
        colours = Image.open(tmp_path / record["image"]).convert("RGB").getcolors(maxcolors=4096)
        # The most common non-grey colour (grey: the background) is the shape's colour.
        shape_colour = max((c for c in colours if len(set(c[1])) > 1), key=lambda c: c[0])[1]
        assert shape_colour == COLOURS[record["truth"]["colour"]][0]
        assert [t["from"] for t in record["conversations"]][-2:] == ["human", "gpt"]
        assert record["conversations"][-2]["value"].startswith("<image>\n")
    colour_qs = [r for r in conversations if "-colour-" in r["id"]]
    assert len(colour_qs) == 60
    for record in colour_qs:
        lang = record["id"].rsplit("-", 1)[1]
        assert record["conversations"][-1]["value"] == colour_answer(record["truth"]["colour"], lang)
    assert len({r["truth"]["colour"] for r in captions}) == len(COLOURS)
    # About half open with the web UI's default system prompt, so the model learns to answer under it.
    with_system = [r for r in conversations if r["conversations"][0]["from"] == "system"]
    assert 25 <= len(with_system) <= 65
    assert all("YuRen" in r["conversations"][0]["value"] for r in with_system)


def test_seed_reproduces_and_another_seed_differs(tmp_path):
    a = write_dataset(tmp_path / "a", num_images=5, seed=1)
    b = write_dataset(tmp_path / "b", num_images=5, seed=1)
    c = write_dataset(tmp_path / "c", num_images=5, seed=2)
    assert a["conversations"].read_text() == b["conversations"].read_text()
    image = "images/shape-1-00000.png"
    assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()
    assert a["conversations"].read_text() != c["conversations"].read_text()


def test_yes_no_data_is_balanced_and_only_the_colour_asked_decides(tmp_path):
    write_dataset(tmp_path, num_images=20, seed=3)
    records = json.loads(write_yes_no_dataset(tmp_path, languages=("en",), seed=0).read_text())
    captions = {r["image"]: r["truth"]["colour"] for r in json.loads((tmp_path / "captions.json").read_text())}
    yes_no = [r for r in records if r["id"].startswith("yes-no-")]
    # Per image: its own colour (yes) and another one (no); and its two colour questions from stage 3's data.
    assert len(yes_no) == 40 and len(records) == 80
    for image, colour in captions.items():
        asked = {
            r["conversations"][-2]["value"]: r["conversations"][-1]["value"] for r in yes_no if r["image"] == image
        }
        assert asked.pop(f"<image>\n{yes_no_question(colour, 'en')}") == "yes"
        assert list(asked.values()) == ["no"] and colour_answer(colour, "en") not in next(iter(asked))
    colour_records = [r for r in records if not r["id"].startswith("yes-no-")]
    assert all(
        r["conversations"][-1]["value"] == colour_answer(r["truth"]["colour"], r["id"][-2:]) for r in colour_records
    )


def test_the_shapes_sample_in_data_is_what_make_shapes_data_writes(tmp_path):
    # data/shapes is documented as the output of one command: it must not drift from the generator.
    from repo_helpers import REPO

    write_dataset(tmp_path, num_images=8, seed=7)
    sample = REPO / "data" / "shapes"
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(sample) for p in sample.rglob("*") if p.is_file())
    for relative in written:
        assert (tmp_path / relative).read_bytes() == (sample / relative).read_bytes(), relative


def test_the_tokenizer_lines_are_the_same_on_any_day(monkeypatch):
    # They train the tiny tokenizer: a line dated the day of the build made every tiny model differ by the day.
    lines = []
    for day in (datetime.date(2026, 12, 6), datetime.date(2026, 12, 7)):

        class Today(datetime.date):
            @classmethod
            def today(cls, day=day):
                return day

        monkeypatch.setattr(datetime, "date", Today)
        lines.append(vocabulary_lines())
    assert lines[0] == lines[1]
