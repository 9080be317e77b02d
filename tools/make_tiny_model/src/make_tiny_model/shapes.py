"""Synthetic images with ground truth: one coloured shape on a plain background.

The point is a dataset where the right answer is only in the image. A model that
names the colour of held-out shapes far above chance (1 in ``len(COLOURS)``),
and falls to chance when its image features are zeroed, demonstrably sees.

Records are in LLaVA's format (``id``, ``image`` relative to the image folder,
``conversations``) plus a ``truth`` field with the colour and shape, so
evaluation needs no parsing of the answer text.
"""

from __future__ import annotations

import datetime
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from yuren_core.prompts import SYSTEM_PROMPT_TEMPLATES, default_system_prompt

# name -> (RGB, Chinese name). Far apart in RGB so the colour is unambiguous at any size.
COLOURS = {
    "red": ((220, 30, 30), "红色"),
    "green": ((30, 170, 60), "绿色"),
    "blue": ((30, 70, 220), "蓝色"),
    "yellow": ((240, 210, 20), "黄色"),
    "purple": ((140, 40, 180), "紫色"),
    "orange": ((245, 130, 20), "橙色"),
}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}

COLOUR_QUESTIONS = {"zh": "图中的形状是什么颜色？", "en": "What colour is the shape in the picture?"}
SHAPE_QUESTIONS = {"zh": "图中是什么形状？", "en": "What shape is in the picture?"}
CAPTION_PROMPTS = {"zh": "用一句话描述这张图片。", "en": "Describe the image in one sentence."}
YES_NO_QUESTIONS = {"zh": "图中的形状是{colour}吗？", "en": "Is the shape {colour}?"}
# (no, yes): each answer's first token, the one that decides it, is a token of its own in the tiny vocabulary.
YES_NO_ANSWERS = {"zh": ("否", "是"), "en": ("no", "yes")}


@dataclass(frozen=True)
class Sample:
    """One generated image and its ground truth."""

    image: Image.Image
    colour: str
    shape: str


def draw_sample(rng: random.Random, size: int = 64) -> Sample:
    """Draw one shape of random colour, kind, size and position on a light background."""
    colour, shape = rng.choice(sorted(COLOURS)), rng.choice(sorted(SHAPES))
    grey = rng.randint(225, 255)
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.22, 0.4) * size
    cx, cy = (rng.uniform(radius, size - radius) for _ in range(2))
    fill = COLOURS[colour][0]
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        corners = 4 if shape == "square" else 3
        turn = rng.uniform(0, 2 * math.pi)
        points = [
            (
                cx + radius * math.cos(turn + 2 * math.pi * k / corners),
                cy + radius * math.sin(turn + 2 * math.pi * k / corners),
            )
            for k in range(corners)
        ]
        draw.polygon(points, fill=fill)
    return Sample(image, colour, shape)


def caption(sample: Sample, lang: str) -> str:
    """The stage-2 caption of a sample."""
    if lang == "zh":
        return f"一个{COLOURS[sample.colour][1]}的{SHAPES[sample.shape]}。"
    return f"A {sample.colour} {sample.shape} on a plain background."


def colour_answer(colour: str, lang: str) -> str:
    """The expected answer to the colour question."""
    return COLOURS[colour][1] if lang == "zh" else colour


def shape_answer(shape: str, lang: str) -> str:
    """The expected answer to the shape question."""
    return SHAPES[shape] if lang == "zh" else shape


def yes_no_question(colour: str, lang: str) -> str:
    """Whether the shape is of ``colour``, asked in ``lang``."""
    return YES_NO_QUESTIONS[lang].format(colour=colour_answer(colour, lang))


def write_dataset(out_dir: Path, *, num_images: int, seed: int, image_size: int = 64) -> dict[str, Path]:
    """Write ``images/``, ``captions.json`` (stage 2) and ``conversations.json`` (stage 3) to ``out_dir``.

    Each image gets a caption in a random language and three conversations: the
    colour question in Chinese and in English, and the shape question in one.
    Half the conversations open with the web UI's default system prompt (random
    language and date), so the model answers the same with or without it.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    captions, conversations = [], []
    for i in range(num_images):
        sample = draw_sample(rng, image_size)
        name = f"images/shape-{seed}-{i:05d}.png"
        sample.image.save(out_dir / name)
        truth = {"colour": sample.colour, "shape": sample.shape}
        lang = rng.choice(("zh", "en"))
        captions.append(
            {
                "id": f"caption-{seed}-{i}",
                "image": name,
                "truth": truth,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{CAPTION_PROMPTS[lang]}"},
                    {"from": "gpt", "value": caption(sample, lang)},
                ],
            }
        )
        # The colour question in both languages (it is what evaluation asks), the shape in one.
        questions = [
            (COLOUR_QUESTIONS, colour_answer(sample.colour, "zh"), "zh"),
            (COLOUR_QUESTIONS, colour_answer(sample.colour, "en"), "en"),
        ]
        lang = rng.choice(("zh", "en"))
        questions.append((SHAPE_QUESTIONS, shape_answer(sample.shape, lang), lang))
        for kind, (asked, answer, lang) in zip(("colour", "colour", "shape"), questions, strict=True):
            turns = [{"from": "human", "value": f"<image>\n{asked[lang]}"}, {"from": "gpt", "value": answer}]
            if rng.random() < 0.5:
                turns.insert(0, {"from": "system", "value": _random_system_prompt(rng)})
            record = {"id": f"qa-{seed}-{i}-{kind}-{lang}", "image": name, "truth": truth, "conversations": turns}
            conversations.append(record)
    paths = {"captions": out_dir / "captions.json", "conversations": out_dir / "conversations.json"}
    for key, records in (("captions", captions), ("conversations", conversations)):
        paths[key].write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return paths


def write_yes_no_dataset(data_dir: Path, *, languages: tuple[str, ...], seed: int) -> Path:
    """Write ``yes_no.json`` beside :func:`write_dataset`'s output in ``data_dir``; return its path.

    For each image, in each of ``languages``:
    whether the shape is of its own colour (yes) and of another, random one
    (no), so the answer is balanced and only the colour asked about tells the
    two apart; plus the image's colour questions from ``conversations.json``,
    so the model keeps naming colours while it learns to compare them. Half
    the yes/no questions open with a default system prompt, as in stage 3.
    """
    data_dir = Path(data_dir)
    captions = json.loads((data_dir / "captions.json").read_text(encoding="utf-8"))
    conversations = json.loads((data_dir / "conversations.json").read_text(encoding="utf-8"))
    asked_colour = {f"<image>\n{question}" for question in COLOUR_QUESTIONS.values()}
    records = [r for r in conversations if r["conversations"][-2]["value"] in asked_colour]
    rng = random.Random(seed)
    for caption_record in captions:
        colour, name = caption_record["truth"]["colour"], caption_record["image"]
        for lang in languages:
            other = rng.choice(sorted(set(COLOURS) - {colour}))
            for asked, answer in ((colour, YES_NO_ANSWERS[lang][True]), (other, YES_NO_ANSWERS[lang][False])):
                turns = [
                    {"from": "human", "value": f"<image>\n{yes_no_question(asked, lang)}"},
                    {"from": "gpt", "value": answer},
                ]
                if rng.random() < 0.5:
                    turns.insert(0, {"from": "system", "value": _random_system_prompt(rng)})
                record_id = f"yes-no-{Path(name).stem}-{lang}-{asked}"
                records.append(
                    {"id": record_id, "image": name, "truth": caption_record["truth"], "conversations": turns}
                )
    path = data_dir / "yes_no.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


# Dates in the data are drawn from here on, and the tokenizer's lines carry this one: never the day a model is
# built, or the tiny tokenizer, and every model trained with it, would change from one day to the next.
FIRST_DAY = datetime.date(2024, 1, 1)


def _random_system_prompt(rng: random.Random) -> str:
    day = FIRST_DAY + datetime.timedelta(days=rng.randrange(365 * 6))
    return default_system_prompt(rng.choice(sorted(SYSTEM_PROMPT_TEMPLATES)), day)


def vocabulary_lines() -> list[str]:
    """Every caption, question and answer string, for training a tokenizer that covers them."""
    lines = [*COLOUR_QUESTIONS.values(), *SHAPE_QUESTIONS.values(), *CAPTION_PROMPTS.values()]
    lines += [default_system_prompt(lang, FIRST_DAY) for lang in SYSTEM_PROMPT_TEMPLATES]
    for colour in COLOURS:
        for shape in SHAPES:
            sample = Sample(None, colour, shape)
            lines += [caption(sample, "zh"), caption(sample, "en")]
    return lines


def main(argv: list[str] | None = None) -> None:
    """``make-shapes-data --output DIR [--num-images N] [--seed S]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="make-shapes-data", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--num-images", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0, help="use another seed for held-out evaluation data")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    paths = write_dataset(args.output, num_images=args.num_images, seed=args.seed, image_size=args.image_size)
    print("\n".join(f"{key}: {path}" for key, path in paths.items()))
