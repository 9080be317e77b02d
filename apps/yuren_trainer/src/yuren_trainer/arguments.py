"""Command-line arguments of the SFT recipes, as ``HfArgumentParser`` dataclasses.

Upstream's command lines were written for transformers 4.x. Three of their flags
are gone from transformers 5's ``TrainingArguments``; :class:`SFTTrainingArguments`
still accepts them and maps each to today's meaning:

==========================  =============================================
upstream flag               transformers 5
==========================  =============================================
``--evaluation_strategy``   ``--eval_strategy``
``--warmup_ratio R``        ``--warmup_steps R`` (a float below 1 is a ratio)
``--group_by_length True``  ``--train_sampling_strategy group_by_length``
==========================  =============================================

Precision flags are checked against the hardware before anything heavy is
loaded, so ``--bf16 True`` on a machine without a GPU ends with a message that
says what to pass instead, not with a stack trace from deep inside the Trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import is_torch_bf16_gpu_available, is_torch_tf32_available

from yuren_core.cli import exit_on
from yuren_core.constants import DEFAULT_CLIP_MODEL
from yuren_core.images import DEFAULT_MAX_PIXELS

from . import distributed


class UsageError(ValueError):
    """Flags that cannot work together or on this machine; the message says what to change."""


@dataclass
class ModelArguments:
    """Which model to fine-tune, and how (all weights, or QLoRA)."""

    model_name_or_path: str = field(
        metadata={"help": "The prepared base model (output of `prepare-base-model`): a directory or hub id."}
    )
    use_lora: bool = field(
        default=False,
        metadata={"help": "Train a QLoRA adapter on a 4-bit base instead of all weights (needs --lora_config)."},
    )
    lora_config: str | None = field(
        default=None,
        metadata={
            "help": "JSON file with the LoRA and 4-bit quantization settings, e.g. apps/yuren_trainer/config/qlora.json."
        },
    )

    def __post_init__(self):
        if self.use_lora and not self.lora_config:
            raise UsageError("--use_lora True needs --lora_config (e.g. apps/yuren_trainer/config/qlora.json)")


@dataclass
class DataArguments:
    """Where the conversations come from and how they become rows."""

    train_file: str = field(metadata={"help": "Training conversations: ShareGPT JSON (a list) or JSON Lines."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Conversations for evaluation at --eval_steps, same formats as --train_file."}
    )
    model_max_length: int = field(
        default=4096, metadata={"help": "Conversations longer than this many tokens are truncated."}
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "Pack several conversations into each row of up to --model_max_length tokens; each keeps its "
            "own position ids and attends only to itself."
        },
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where tokenized datasets are cached (default: a `yuren_sft` folder in the datasets cache)."},
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Processes that tokenize the data, and threads that check its images "
            "(default: the cores available, at most 8)."
        },
    )

    def __post_init__(self):
        if self.model_max_length < 2:
            raise UsageError(f"--model_max_length must be at least 2, got {self.model_max_length}")
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 1:
            raise UsageError(f"--preprocessing_num_workers must be at least 1, got {self.preprocessing_num_workers}")


@dataclass
class ImageDataArguments(DataArguments):
    """``DataArguments`` plus where the images are and how large they may be (stages 2 and 3)."""

    image_folder: str | None = field(
        default=None,
        metadata={"help": "Folder the records' 'image'/'images' paths are relative to (required)."},
    )
    max_image_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata={"help": "Refuse images with more pixels than this (decompression bombs)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.image_folder:
            raise UsageError("--image_folder is required: the folder the records' image paths are relative to")
        if not Path(self.image_folder).is_dir():
            raise UsageError(f"--image_folder {self.image_folder}: no such directory")


@dataclass
class VisionTowerArguments:
    """The vision side of a newly assembled fused model (stage 2, or stage 3 with --projector_path)."""

    clip_model: str = field(
        default=DEFAULT_CLIP_MODEL,
        metadata={"help": "open_clip model whose vision tower is used: 'hf-hub:org/repo' or 'local-dir:/path'."},
    )
    vision_feature_layer: int = field(
        default=-2,
        metadata={"help": "Which tower block's patch features feed the projector (-2: the penultimate, as LLaVA)."},
    )
    image_pad_to_square: bool = field(
        default=False,
        metadata={"help": "Pad images to a square before resizing (stored in the model config; serving follows it)."},
    )

    def __post_init__(self):
        if not self.clip_model.startswith(("hf-hub:", "local-dir:")):
            raise UsageError(f"--clip_model {self.clip_model}: use 'hf-hub:org/repo' or 'local-dir:/path/to/dir'")
        if self.clip_model.startswith("local-dir:"):
            folder = Path(self.clip_model.removeprefix("local-dir:"))
            if not (folder / "open_clip_config.json").is_file():
                raise UsageError(
                    f"--clip_model {self.clip_model}: {folder} holds no open_clip_config.json; pass a directory with "
                    "an open_clip model's config and weights, or 'hf-hub:org/repo'"
                )


@dataclass
class SFTTrainingArguments(TrainingArguments):
    """``TrainingArguments`` that also accept upstream's transformers-4 spellings and check precision flags."""

    evaluation_strategy: str | None = field(
        default=None, metadata={"help": "Upstream spelling of --eval_strategy (transformers 4)."}
    )
    warmup_ratio: float | None = field(
        default=None,
        metadata={"help": "Upstream spelling: warm up over this share of the steps (becomes --warmup_steps RATIO)."},
    )
    group_by_length: bool | None = field(
        default=None,
        metadata={"help": "Upstream spelling of --train_sampling_strategy group_by_length (transformers 4)."},
    )
    # YuRen's collators pick the columns they need (and carry image paths for the
    # multimodal stages), so the Trainer must not strip columns the model's
    # forward() does not name.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Drop dataset columns the model's forward() does not take."}
    )
    # Upstream logged to wandb unless told otherwise; transformers 5 defaults to no logging at all.
    report_to: None | str | list[str] = field(
        default="wandb",
        metadata={
            "help": "Where to log: wandb (as upstream; without an account set WANDB_MODE=offline), none, or "
            "any transformers integration."
        },
    )

    def __post_init__(self):
        self._map_upstream_flags()
        check_precision_flags(self)
        if distributed.needs_cpu_process_group(self):
            self.use_cpu = True
        if not distributed.has_accelerator():
            # Pinned host memory only speeds up copies to a GPU.
            self.dataloader_pin_memory = False
        super().__post_init__()

    def _map_upstream_flags(self) -> None:
        if self.evaluation_strategy is not None:
            if self.eval_strategy not in ("no", self.evaluation_strategy):
                raise UsageError(
                    f"--evaluation_strategy {self.evaluation_strategy} contradicts --eval_strategy {self.eval_strategy}; "
                    "pass only one of them"
                )
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise UsageError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps not in (0, self.warmup_ratio):
                raise UsageError("--warmup_ratio and --warmup_steps both set the warmup; pass only one of them")
            self.warmup_steps = self.warmup_ratio
        if self.group_by_length:
            if self.train_sampling_strategy not in ("random", "group_by_length"):
                raise UsageError(
                    f"--group_by_length True contradicts --train_sampling_strategy {self.train_sampling_strategy}"
                )
            self.train_sampling_strategy = "group_by_length"

    # The one private seam of transformers the trainer uses: the counts must be right inside the device set-up,
    # since TrainingArguments.__post_init__ already sizes DeepSpeed's batch from them (a public hook after parsing
    # comes too late). tests/yuren_trainer/test_distributed.py fails loudly if transformers changes the seam.
    @cached_property
    def _setup_devices(self):
        device = TrainingArguments._setup_devices.func(self)
        distributed.reconcile_process_counts(self.distributed_state)
        return device


def check_precision_flags(args: TrainingArguments) -> None:
    """Refuse precision flags this machine cannot honour, saying what to pass instead."""
    if args.bf16 and not args.use_cpu and not is_torch_bf16_gpu_available():
        raise UsageError(
            "--bf16 True needs a GPU with bfloat16 support, and none was found on this machine. "
            "On a CPU-only machine run with --bf16 False --tf32 False (the DeepSpeed config follows these flags)."
        )
    if args.tf32 and not is_torch_tf32_available():
        raise UsageError(
            "--tf32 True needs an NVIDIA Ampere or newer GPU, and none was found on this machine. "
            "Run with --tf32 False (and --bf16 False on a CPU-only machine)."
        )
    if args.fp16 and not args.use_cpu and not distributed.has_accelerator():
        raise UsageError("--fp16 True needs a GPU, and none was found on this machine. Run with --fp16 False.")


def parse_args(dataclass_types, argv: list[str] | None = None, prog: str | None = None):
    """Parse ``argv`` into ``dataclass_types``; a :class:`UsageError` exits with status 2 and its message."""
    parser = HfArgumentParser(dataclass_types, prog=prog)
    with exit_on(parser.prog, UsageError):
        return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
