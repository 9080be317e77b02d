"""Image benchmarks read from their own releases, answered greedily, scored per benchmark.

lmms-eval was not used: its tasks read lmms-lab's re-packaged hub copies, not
the files each benchmark publishes, which offline machines have. Each reader
below takes one benchmark's own layout:

* **POPE**: ``*.json`` files of JSON lines (``question_id``, ``image``,
  ``text``, ``label`` yes/no), e.g. ``coco_pope_random.json``, and the images
  (COCO val2014) in ``images/``. Scored per file and over all.
* **MME** (yes/no perception and cognition): one folder per category; each
  image has a ``.txt`` of ``question<TAB>Yes|No`` lines, beside it or in
  ``questions_answers_YN/`` with the image in ``images/``. Besides accuracy,
  MME's score: per category 100 x (accuracy + accuracy over images with both
  questions right), summed.
* **ScienceQA-IMG**: ``problems.json``, ``pid_splits.json`` and
  ``images/{split}/{pid}/{image}``; the test problems that have an image,
  asked with lettered choices; the answer is the letter the model gives.

Yes/no answers are read from the answer's first word (English or Chinese);
an answer that is neither counts as wrong.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .answering import Prompt, greedy_answers, user_turn, zeroed_image_features

LETTERS = "ABCDEFGHIJ"
IMAGE_SETS = ("pope", "mme", "scienceqa")


class ImageSetError(ValueError):
    """A benchmark folder or record that cannot be read; the message names the file and what to do."""


@dataclass(frozen=True)
class ImageQuestion:
    """One question about one image, its right answer (``yes``/``no`` or a letter) and its group for scoring."""

    id: str
    image: Path
    question: str
    answer: str
    group: str


def read_pope(folder: Path) -> list[ImageQuestion]:
    """POPE's JSON-lines files in ``folder``, images in ``folder/images``."""
    files = sorted(folder.glob("*.json")) + sorted(folder.glob("*.jsonl"))
    if not files:
        raise ImageSetError(f"no POPE question files (*.json, JSON lines) in {folder}")
    questions = []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                label = record["label"].strip().lower()
                question = ImageQuestion(
                    f"{file.stem}-{record['question_id']}",
                    folder / "images" / record["image"],
                    record["text"],
                    label,
                    file.stem,
                )
            except (json.JSONDecodeError, KeyError, AttributeError) as error:
                raise ImageSetError(
                    f"{file}, line {number}: not a POPE record with question_id, image, text and label ({error})"
                ) from error
            if label not in ("yes", "no"):
                raise ImageSetError(f"{file}, line {number}: label {label!r} is neither yes nor no")
            questions.append(question)
    return questions


def read_mme(folder: Path) -> list[ImageQuestion]:
    """MME's category folders in ``folder``."""
    questions = []
    for category in sorted(p for p in folder.iterdir() if p.is_dir()):
        nested = category / "questions_answers_YN"
        for text_file in sorted((nested if nested.is_dir() else category).glob("*.txt")):
            image = _image_beside(category / "images" if nested.is_dir() else category, text_file.stem)
            for number, line in enumerate(text_file.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                question, _, answer = line.rpartition("\t")
                answer = answer.strip().lower()
                if not question or answer not in ("yes", "no"):
                    raise ImageSetError(f"{text_file}, line {number}: expected 'question<TAB>Yes' or '...<TAB>No'")
                questions.append(
                    ImageQuestion(f"{category.name}/{text_file.stem}-{number}", image, question, answer, category.name)
                )
    if not questions:
        raise ImageSetError(f"no MME category folders with question files in {folder}")
    return questions


def _image_beside(folder: Path, stem: str) -> Path:
    for suffix in (".jpg", ".png", ".jpeg", ".JPG", ".PNG"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise ImageSetError(f"no image named {stem}.jpg or .png in {folder} for its question file {stem}.txt")


def read_scienceqa(folder: Path, split: str = "test") -> list[ImageQuestion]:
    """ScienceQA's ``split`` problems that have an image (ScienceQA-IMG), asked with lettered choices."""
    try:
        problems = json.loads((folder / "problems.json").read_text(encoding="utf-8"))
        ids = json.loads((folder / "pid_splits.json").read_text(encoding="utf-8"))[split]
    except (OSError, KeyError, json.JSONDecodeError) as error:
        raise ImageSetError(f"{folder} must hold ScienceQA's problems.json and pid_splits.json ({error})") from error
    questions = []
    for pid in ids:
        problem = problems[pid]
        if not problem.get("image"):
            continue
        choices = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(problem["choices"]))
        context = f"Context: {problem['hint']}\n" if problem.get("hint") else ""
        text = f"{context}{problem['question']}\n{choices}\nAnswer with the option's letter from the given choices directly."
        image = folder / "images" / split / pid / problem["image"]
        questions.append(
            ImageQuestion(pid, image, text, LETTERS[int(problem["answer"])], problem.get("subject", split))
        )
    if not questions:
        raise ImageSetError(f"{folder}/problems.json has no {split} problems with an image")
    return questions


READERS = {"pope": read_pope, "mme": read_mme, "scienceqa": read_scienceqa}


def yes_or_no(answer: str) -> str | None:
    """``yes``/``no`` from an answer's first word (English or Chinese); ``None`` when it is neither."""
    text = answer.strip().lower()
    if re.match(r"yes\b", text) or text.startswith(("是", "对", "有")):
        return "yes"
    if re.match(r"no\b", text) or text.startswith(("否", "不", "没")):
        return "no"
    return None


def chosen_letter(answer: str) -> str | None:
    """The option letter an answer starts with (``B``, ``B.``, ``(B)``); ``None`` without one."""
    match = re.match(r"\s*\(?([A-J])(?![A-Za-z])", answer)
    return match.group(1) if match else None


def is_right(question: ImageQuestion, answer: str) -> bool:
    """Whether ``answer`` gives ``question``'s right answer."""
    given = yes_or_no(answer) if question.answer in ("yes", "no") else chosen_letter(answer)
    return given == question.answer


def score(benchmark: str, questions: Sequence[ImageQuestion], answers: Sequence[str]) -> dict:
    """Accuracy over all and per group; for MME also its score (sum over categories of 100 x (acc + acc+))."""
    right = [is_right(q, a) for q, a in zip(questions, answers, strict=True)]
    groups: dict[str, list[bool]] = defaultdict(list)
    for question, correct in zip(questions, right, strict=True):
        groups[question.group].append(correct)
    result = {
        "accuracy": sum(right) / len(right),
        "n": len(right),
        "groups": {group: {"accuracy": sum(v) / len(v), "n": len(v)} for group, v in sorted(groups.items())},
    }
    if benchmark == "mme":
        per_image: dict[tuple[str, Path], list[bool]] = defaultdict(list)
        for question, correct in zip(questions, right, strict=True):
            per_image[(question.group, question.image)].append(correct)
        total = 0.0
        for group, entry in result["groups"].items():
            images = [all(v) for (g, _), v in per_image.items() if g == group]
            entry["accuracy_plus"] = sum(images) / len(images)
            entry["score"] = 100 * (entry["accuracy"] + entry["accuracy_plus"])
            total += entry["score"]
        result["score"] = total
    return result


def evaluate_image_set(
    model,
    tokenizer,
    processor,
    benchmark: str,
    folder: Path,
    *,
    limit: int | None = None,
    zero_image_features: bool = False,
    batch_size: int = 32,
    system_prompt: str | None = None,
) -> dict:
    """Read ``benchmark`` from ``folder``, answer each question greedily, return :func:`score`'s result."""
    questions = READERS[benchmark](Path(folder))[:limit]
    missing = [q for q in questions if not q.image.is_file()]
    if missing:
        raise ImageSetError(
            f"{len(missing)} image(s) of {benchmark} not found, e.g. {missing[0].image} ({missing[0].id})"
        )
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompts = [Prompt([*system, user_turn(q.question)], [q.image]) for q in questions]
    max_new_tokens = 8
    if zero_image_features:
        with zeroed_image_features(model):
            answers = greedy_answers(
                model, tokenizer, processor, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                progress=f"{benchmark} (zeroed images)",
            )  # fmt: skip
    else:
        answers = greedy_answers(
            model,
            tokenizer,
            processor,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=benchmark,
        )
    result = score(benchmark, questions, answers)
    result["zero_image_features"] = zero_image_features
    result["answers"] = {q.id: a for q, a in zip(questions, answers, strict=True)}
    return result
