"""The tiny YuRen model trained through all three stages, in this process, on the project's own data.

:func:`train_tiny_yuren` is the one place that runs the whole pipeline on a
tiny model: make the tiny base and vision tower, prepare the base, stage 1 on
the sample conversations (:mod:`make_tiny_model.sample_data`), stage 2 on shapes captions, stage 3 on shapes
conversations mixed with the text conversations, then a short stage-3 run on
yes/no questions about the shapes' colours (``run.final``: "Is the shape red?"
needs the colour asked about compared with the image's, which the tiny model
does not learn from a few such questions among many others). The tests use it
to prove the multimodal stages make a model that sees (:func:`colour_accuracy`
on held-out shapes, and the same with the image features zeroed; a yes/no set
through ``evaluate``); the web UI uses it to build its demo model. Each stage
runs through its command's own ``main``, with the flags a user would pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from make_tiny_model.sample_data import sample_conversations
from make_tiny_model.shapes import COLOUR_QUESTIONS, write_dataset, write_yes_no_dataset
from make_tiny_model.tiny_model import main as make_tiny_model

# Bump when the pipeline changes in a way the recipe's values do not show (a changed stage, new data).
PIPELINE_VERSION = 4

# The shapes evaluated on are drawn with this seed, which no recipe trains on.
HELD_OUT_SEED = 1001

# What every CPU run of a stage needs: no GPU precision, no logging service.
CPU_FLAGS = ["--bf16", "False", "--tf32", "False", "--report_to", "none"]


@dataclass(frozen=True)
class StageSettings:
    """The training flags that differ between the stages."""

    epochs: float
    learning_rate: float
    batch_size: int
    packing: bool = False


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that decides the trained tiny model: sizes, data, the stages' settings."""

    # make-tiny-model flags
    model_flags: tuple[str, ...] = ()
    train_images: int = 1200
    image_size: int = 64
    max_length: int = 512
    seed: int = 0
    stage1: StageSettings = field(
        default_factory=lambda: StageSettings(epochs=10, learning_rate=1e-2, batch_size=8, packing=True)
    )
    stage2: StageSettings = field(default_factory=lambda: StageSettings(epochs=2, learning_rate=1e-2, batch_size=16))
    stage3: StageSettings = field(default_factory=lambda: StageSettings(epochs=3, learning_rate=5e-3, batch_size=8))
    # The yes/no run on every training image: its languages and settings. English only: with the Chinese
    # questions too (图中的形状是红色吗？, close to the colour question) the tiny model's colour naming fell to
    # 0.74 and its Chinese yes/no stayed near chance.
    yes_no_languages: tuple[str, ...] = ("en",)
    # Three epochs: with two, the held-out yes/no accuracy (tests/yuren_eval/test_image_sets_on_shapes.py) was
    # 0.77-0.90 over three tiny tokenizers (the lines that trained them dated by the day of the build, since
    # fixed); with three, 0.95-0.98 on the same three.
    yes_no: StageSettings = field(default_factory=lambda: StageSettings(epochs=3, learning_rate=5e-3, batch_size=8))

    def key(self) -> str:
        """A short name for this recipe and pipeline version: equal keys build equal models."""
        settings = json.dumps({"pipeline": PIPELINE_VERSION, **asdict(self)}, sort_keys=True)
        return f"v{PIPELINE_VERSION}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class TinyRun:
    """Where a pipeline run put each stage's output."""

    root: Path

    @property
    def tiny(self) -> Path:
        return self.root / "tiny"

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def shapes(self) -> Path:
        return self.root / "shapes"

    @property
    def stage1(self) -> Path:
        return self.root / "stage1"

    @property
    def stage2(self) -> Path:
        return self.root / "stage2"

    @property
    def stage3(self) -> Path:
        return self.root / "stage3"

    @property
    def final(self) -> Path:
        """The finished model: stage 3 continued on yes/no questions."""
        return self.root / "yes-no"


STEPS = (
    "tiny model",
    "prepare base",
    "shapes data",
    "stage 1: text SFT",
    "stage 2: projector",
    "stage 3: multimodal SFT",
    "stage 3 on yes/no questions",
)


def train_tiny_yuren(
    work_dir: str | os.PathLike,
    recipe: TinyRecipe = TinyRecipe(),
    *,
    progress: Callable[[int, str], None] | None = None,
    show_training_bars: bool = False,
) -> TinyRun:
    """Run the whole pipeline into ``work_dir``; return where each output is (``run.final`` is the final model).

    ``progress(i, name)`` is called before each of the :data:`STEPS`;
    ``show_training_bars`` shows the Trainer's own progress bars.
    """
    with single_thread(), sample_conversations() as text_data:
        return _train(text_data, Path(work_dir), recipe, progress or (lambda i, name: None), show_training_bars)


def _train(
    text_data: Path, work_dir: Path, recipe: TinyRecipe, report: Callable[[int, str], None], show_training_bars: bool
) -> TinyRun:
    from prepare_base_model.prepare import prepare
    from yuren_trainer import clip_sft, multimodal_sft, text_sft

    run = TinyRun(work_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    quiet = ["--disable_tqdm", str(not show_training_bars), "--seed", str(recipe.seed), "--log_level", "warning"]
    cache = ["--data_cache_dir", str(run.root / "datasets-cache")]

    report(0, STEPS[0])
    make_tiny_model(["--output", str(run.tiny), "--seed", str(recipe.seed), *recipe.model_flags])
    report(1, STEPS[1])
    prepare(str(run.tiny / "base"), run.prepared, overwrite=True)
    report(2, STEPS[2])
    data = write_dataset(run.shapes, num_images=recipe.train_images, seed=recipe.seed, image_size=recipe.image_size)

    report(3, STEPS[3])
    text_sft.main(
        [
            "--model_name_or_path", str(run.prepared), "--train_file", str(text_data),
            *_stage_flags(recipe.stage1, recipe, run.stage1), *quiet, *cache,
        ]
    )  # fmt: skip
    report(4, STEPS[4])
    clip_sft.main(
        [
            "--model_name_or_path", str(run.stage1), "--clip_model", f"local-dir:{run.tiny / 'clip'}",
            "--train_file", str(data["captions"]), "--image_folder", str(run.shapes),
            *_stage_flags(recipe.stage2, recipe, run.stage2), *quiet, *cache,
        ]
    )  # fmt: skip
    report(5, STEPS[5])
    multimodal_sft.main(
        [
            "--model_name_or_path", str(run.stage2), "--train_file", str(data["conversations"]),
            "--text_train_file", str(text_data), "--image_folder", str(run.shapes),
            *_stage_flags(recipe.stage3, recipe, run.stage3), *quiet, *cache,
        ]
    )  # fmt: skip
    report(6, STEPS[6])
    yes_no = write_yes_no_dataset(run.shapes, languages=recipe.yes_no_languages, seed=recipe.seed)
    multimodal_sft.main(
        [
            "--model_name_or_path", str(run.stage3), "--train_file", str(yes_no), "--image_folder", str(run.shapes),
            *_stage_flags(recipe.yes_no, recipe, run.final), *quiet, *cache,
        ]
    )  # fmt: skip
    return run


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread within the block.

    A tiny model's operations are too small to gain from intra-op threads, and
    on a busy machine threads that wait for each other slow every step down
    many times over.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _stage_flags(stage: StageSettings, recipe: TinyRecipe, output: Path) -> list[str]:
    return [
        "--output_dir", str(output),
        "--num_train_epochs", str(stage.epochs), "--learning_rate", str(stage.learning_rate),
        "--per_device_train_batch_size", str(stage.batch_size), "--model_max_length", str(recipe.max_length),
        "--packing", str(stage.packing), "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.05", "--weight_decay", "0",
        "--logging_steps", "10", "--save_strategy", "no", *CPU_FLAGS,
    ]  # fmt: skip


def colour_questions(records: list[dict]) -> list[dict]:
    """The records of a shapes ``conversations.json`` that ask for the shape's colour (either language)."""
    asked = set(COLOUR_QUESTIONS.values())
    return [r for r in records if r["conversations"][-2]["value"].removeprefix("<image>\n") in asked]


def colour_accuracy(
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    num_images: int = 60,
    seed: int = HELD_OUT_SEED,
    image_size: int = 64,
    zero_image_features: bool = False,
) -> float:
    """Greedy exact-match accuracy of the model in ``model_dir`` on the colour question about new shapes.

    The shapes are generated into ``data_dir`` with ``seed`` (use one the model
    was not trained on); each is asked in Chinese and in English. Chance is
    ``1 / len(COLOURS)``. With ``zero_image_features`` the projector's output is
    zeroed: the control that shows the answers come from the image.
    """
    from yuren_core.loading import load_model
    from yuren_eval.exact_match import exact_match_accuracy

    paths = write_dataset(Path(data_dir), num_images=num_images, seed=seed, image_size=image_size)
    records = colour_questions(json.loads(paths["conversations"].read_text(encoding="utf-8")))
    with single_thread():
        model, tokenizer, processor = load_model(model_dir)
        return exact_match_accuracy(
            model, tokenizer, processor, records, Path(data_dir), zero_image_features=zero_image_features
        )
