"""Image sets from the Hugging Face hub, written out in each benchmark's own layout.

Without ``--data_dir``, each image set is downloaded from the hub copy the
community evaluates on and converted once into the layout its reader in
:mod:`yuren_eval.image_sets` takes, so hub and local copies go through the
same reader and scoring:

* **POPE**: ``lmms-lab/POPE`` (parquet: ``question_id``, ``question``,
  ``answer``, ``image_source``, ``image``, ``category``) becomes
  ``coco_pope_{category}.json`` (JSON lines) and ``images/``.
* **MME**: ``lmms-lab/MME`` (``question_id`` ``category/image-file``,
  ``question``, ``answer``, ``category``, ``image``) becomes one folder per
  category with each image and its ``question<TAB>Yes|No`` ``.txt`` beside it.
* **ScienceQA-IMG**: ``derek-thomas/ScienceQA`` (the authors' hub release:
  ``question``, ``choices``, ``answer``, ``hint``, ``subject``, ``image``),
  test split, becomes ``problems.json``, ``pid_splits.json`` and
  ``images/test/{pid}/image.png``.

The converted copy is kept under the cache folder, named after the repository
and the downloaded revision, so a second run reads it without converting again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from yuren_core.atomic import atomic_directory

from .image_sets import ImageSetError


@dataclass(frozen=True)
class HubSource:
    """Where an image set is on the hub and how its rows become the benchmark's own layout."""

    repo_id: str
    # The parquet files of the evaluated split, relative to the repository root.
    files: str
    write: Callable[[Iterator[dict], Path], None]


def _rows(snapshot: Path, pattern: str) -> Iterator[dict]:
    files = sorted(snapshot.glob(pattern))
    if not files:
        raise ImageSetError(f"the hub snapshot in {snapshot} has no files matching {pattern}")
    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=64):
            yield from batch.to_pylist()


def _image_bytes(row: dict, where: str) -> bytes:
    image = row.get("image")
    if not image or not image.get("bytes"):
        raise ImageSetError(f"{where}: the hub record has no image bytes")
    return image["bytes"]


def write_pope(rows: Iterator[dict], folder: Path) -> None:
    """POPE's JSON-lines files, one per category (random, popular, adversarial), and ``images/``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    for row in rows:
        # COCO image ids name the images; the same image is asked about many times.
        name = f"{row['image_source']}.jpg"
        if not (folder / "images" / name).exists():
            (folder / "images" / name).write_bytes(_image_bytes(row, f"POPE question {row['question_id']}"))
        record = {"question_id": row["question_id"], "image": name, "text": row["question"], "label": row["answer"]}
        files.setdefault(row["category"], []).append(json.dumps(record, ensure_ascii=False))
    for category, lines in files.items():
        (folder / f"coco_pope_{category}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_mme(rows: Iterator[dict], folder: Path) -> None:
    """MME's category folders: each image with its ``question<TAB>Yes|No`` lines in a ``.txt`` beside it."""
    lines: dict[Path, list[str]] = {}
    for row in rows:
        name = Path(row["question_id"]).name
        image = folder / row["category"] / (name if Path(name).suffix else f"{name}.png")
        if not image.exists():
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(_image_bytes(row, f"MME question {row['question_id']}"))
        # One question per line in MME's files.
        question = " ".join(row["question"].split())
        lines.setdefault(image.with_suffix(".txt"), []).append(f"{question}\t{row['answer'].strip()}")
    for text_file, entries in lines.items():
        text_file.write_text("\n".join(entries) + "\n", encoding="utf-8")


def write_scienceqa(rows: Iterator[dict], folder: Path) -> None:
    """ScienceQA's ``problems.json``, ``pid_splits.json`` and ``images/test/{pid}/image.png`` (test split)."""
    problems, ids = {}, []
    for number, row in enumerate(rows):
        # The hub release has no problem ids; its row order names them.
        pid = f"test-{number}"
        image = None
        if row.get("image"):
            image = "image.png"
            target = folder / "images" / "test" / pid / image
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_image_bytes(row, f"ScienceQA test row {number}"))
        problems[pid] = {
            "question": row["question"],
            "choices": list(row["choices"]),
            "answer": int(row["answer"]),
            "hint": row.get("hint") or "",
            "image": image,
            "subject": row.get("subject"),
            "split": "test",
        }
        ids.append(pid)
    (folder / "problems.json").write_text(json.dumps(problems, ensure_ascii=False), encoding="utf-8")
    (folder / "pid_splits.json").write_text(json.dumps({"test": ids}), encoding="utf-8")


HUB_SOURCES = {
    "pope": HubSource("lmms-lab/POPE", "data/test-*.parquet", write_pope),
    "mme": HubSource("lmms-lab/MME", "data/test-*.parquet", write_mme),
    "scienceqa": HubSource("derek-thomas/ScienceQA", "data/test-*.parquet", write_scienceqa),
}


def hub_copy(benchmark: str, cache_dir: Path) -> Path:
    """Download ``benchmark`` from the hub (or find it in the hub cache); return its folder in the benchmark's layout.

    Raises :class:`ImageSetError` naming ``--data_dir`` when the hub cannot be
    reached and the set is not in the cache (an offline machine).
    """
    source = HUB_SOURCES[benchmark]
    try:
        snapshot = Path(snapshot_download(source.repo_id, repo_type="dataset", allow_patterns=[source.files]))
    except (LocalEntryNotFoundError, HfHubHTTPError) as error:
        raise ImageSetError(
            f"could not download {benchmark} from the hub ({source.repo_id}): {error}\n"
            f"On a machine without the hub, pass --data_dir DIR with a local copy of the benchmark in its own "
            f"format in DIR/{benchmark}/"
        ) from error
    # The snapshot folder is named after the revision: a new revision is converted anew.
    target = Path(cache_dir) / f"{source.repo_id.replace('/', '--')}-{snapshot.name}"
    if not target.is_dir():
        with atomic_directory(target) as staging:
            source.write(_rows(snapshot, source.files), staging)
    return target
