"""Stage 3: multimodal SFT. Projector and LLM train on image and text conversations; the vision tower stays frozen.

Run it under torchrun, in stage 1's flag style (see the project README)::

    torchrun --nproc_per_node=8 -m yuren_trainer.multimodal_sft \\
      --model_name_or_path dist/yuren-7b-stage2 --train_file llava.json --text_train_file train.json \\
      --image_folder images/ --num_train_epochs 2 ... \\
      --deepspeed apps/yuren_trainer/config/deepspeed_config.json --output_dir dist/yuren-7b-stage3

It starts from stage 2's output, or from a stage-1 model plus
``--projector_path`` (stage 2's ``mm_projector.safetensors``), in which case
the fused model is assembled again with ``--clip_model``. The image
conversations (``--train_file``) and the stage-1 text conversations
(``--text_train_file``) are trained on together, 2 epochs by default. All
weights but the tower's train (under DeepSpeed ZeRO-3 for a 7B model), or with
``--use_lora True --lora_config ...`` a QLoRA adapter, the projector and the
new tokens' embedding rows. Its output is the model the web UI serves (merge a
LoRA adapter with ``merge-lora`` first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig

from yuren_core.modeling import YuRenConfig
from yuren_core.records import read_conversations
from yuren_core.upstream import is_upstream_checkpoint

from .arguments import (
    ImageDataArguments,
    ModelArguments,
    SFTTrainingArguments,
    UsageError,
    VisionTowerArguments,
)
from .data import image_position_of
from .models import (
    assemble_fused_model,
    clip_image_seq_len,
    load_model_to_train,
    load_release,
    load_yuren_tokenizer,
    log_trainable,
    release_image_seq_len,
)
from .projector import PROJECTOR, PROJECTOR_FILE, load_projector
from .stage import Stage, StageSetup, run_stage
from .training_data import load_image_datasets, make_image_collator

logger = logging.getLogger(__name__)


@dataclass
class MultimodalModelArguments(ModelArguments):
    """Where stage 3 starts: stage 2's output, or a stage-1 model plus a projector file."""

    model_name_or_path: str = field(
        metadata={
            "help": "Stage 2's output (a YuRen checkpoint) or upstream's released model; or, with --projector_path, "
            "the stage-1 model (a directory or hub id)."
        }
    )
    projector_path: str | None = field(
        default=None,
        metadata={
            "help": f"Stage 2's {PROJECTOR_FILE}: assemble the fused model from the stage-1 model in "
            "--model_name_or_path and --clip_model, and start the projector from this file."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.projector_path and self.use_lora:
            raise UsageError(
                "--use_lora True loads a saved YuRen checkpoint in 4 bits; it cannot start from --projector_path. "
                "Start from stage 2's output instead"
            )
        if self.projector_path and not Path(self.projector_path).is_file():
            raise UsageError(
                f"--projector_path {self.projector_path}: no such file (stage 2 writes {PROJECTOR_FILE} into its output)"
            )


@dataclass
class MultimodalDataArguments(ImageDataArguments):
    """The image conversations (``--train_file``) plus the stage-1 text conversations mixed in."""

    text_train_file: str | None = field(
        default=None,
        metadata={"help": "Stage 1's text conversations (ShareGPT JSON or JSON Lines), trained on alongside."},
    )


@dataclass
class MultimodalTrainingArguments(SFTTrainingArguments):
    """``SFTTrainingArguments`` with stage 3's default of 2 epochs."""

    num_train_epochs: float = field(default=2.0, metadata={"help": "Total number of training epochs (default 2)."})


def starting_config(model_args: MultimodalModelArguments):
    """The config of the YuRen checkpoint stage 3 starts from; refuses a LLaMA model without --projector_path."""
    config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    if not isinstance(config, YuRenConfig):
        raise UsageError(
            f"--model_name_or_path {model_args.model_name_or_path} is a {config.model_type!r} model, not a YuRen "
            f"(image + text) checkpoint: start from stage 2's output, or pass the stage-1 model with "
            f"--projector_path (stage 2's {PROJECTOR_FILE}) and --clip_model"
        )
    return config


def build_model(model_args: MultimodalModelArguments, vision_args: VisionTowerArguments, args, tokenizer):
    """The model to train, with the vision tower frozen."""
    if model_args.projector_path:
        model = assemble_fused_model(model_args.model_name_or_path, vision_args, args)
        load_projector(model, model_args.projector_path)
    elif is_upstream_checkpoint(model_args.model_name_or_path) and not model_args.use_lora:
        model = load_release(model_args.model_name_or_path, args, tokenizer)
    else:
        # With LoRA, the projector trains whole inside the adapter; the tower is frozen with the rest of the base.
        model = load_model_to_train(model_args, args, tokenizer, modules_to_save=[PROJECTOR])
    if not model_args.use_lora:
        model.vision_tower.requires_grad_(False)
    log_trainable(model)
    return model


def record_image_position(config, train_file: str) -> None:
    """Set ``config.image_position`` to where ``train_file``'s user turns put their images (the majority).

    The saved checkpoint carries it, and inference places images the same way.
    A tie (or no image turn) keeps the starting checkpoint's value.
    """
    position, counts = image_position_of(read_conversations(train_file), default=config.image_position)
    logger.info(
        "image_position %r: %d image turns have the images before their text, %d after (%s)",
        position,
        counts["before_text"],
        counts["after_text"],
        "a tie keeps the starting checkpoint's value" if counts["before_text"] == counts["after_text"] else "majority",
    )
    config.image_position = position


def set_up(
    model_args: MultimodalModelArguments,
    vision_args: VisionTowerArguments,
    data_args: MultimodalDataArguments,
    args: MultimodalTrainingArguments,
) -> StageSetup:
    """Tokenizer, image and text datasets, and the model with its vision tower frozen."""
    tokenizer = load_yuren_tokenizer(model_args.model_name_or_path)
    if model_args.projector_path:
        image_seq_len = clip_image_seq_len(vision_args.clip_model)
    elif is_upstream_checkpoint(model_args.model_name_or_path):
        image_seq_len = release_image_seq_len(model_args.model_name_or_path, tokenizer)
    else:
        image_seq_len = starting_config(model_args).image_seq_len
    train_dataset, eval_dataset = load_image_datasets(
        data_args, args, tokenizer, image_seq_len=image_seq_len, text_train_file=data_args.text_train_file
    )
    model = build_model(model_args, vision_args, args, tokenizer)
    record_image_position(model.config, data_args.train_file)
    collator = make_image_collator(data_args, args, tokenizer, model.config)
    return StageSetup(model, tokenizer, train_dataset, eval_dataset, collator, packing=data_args.packing)


STAGE = Stage(
    "multimodal_sft",
    (MultimodalModelArguments, VisionTowerArguments, MultimodalDataArguments, MultimodalTrainingArguments),
    set_up,
)


def main(argv: list[str] | None = None) -> None:
    """Run stage 3 with the flags in ``argv`` (default: the command line)."""
    run_stage(STAGE, argv)


if __name__ == "__main__":
    main()
