"""Stage 2: projector alignment. Only the projector trains; the LLM and the vision tower stay frozen.

Run it under torchrun, in stage 1's flag style (see the project README)::

    torchrun --nproc_per_node=8 -m yuren_trainer.clip_sft \\
      --model_name_or_path dist/yuren-7b-stage1 \\
      --clip_model hf-hub:laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K \\
      --train_file captions.json --image_folder images/ ... --output_dir dist/yuren-7b-stage2

The fused model is assembled from the stage-1 model and the open_clip vision
tower (``local-dir:/path`` for a local one), its projector starting random.
Captions are LLaVA-format records (``"image"`` + a conversation whose human
turn holds ``<image>``). The output directory receives a full fused checkpoint
(what stage 3 and ``load_model`` read) and the projector alone in
``mm_projector.safetensors`` (what stage 3's ``--projector_path`` reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from yuren_core.upstream import is_upstream_checkpoint

from .arguments import ImageDataArguments, SFTTrainingArguments, VisionTowerArguments
from .models import (
    assemble_fused_model,
    clip_image_seq_len,
    load_release,
    load_yuren_tokenizer,
    release_image_seq_len,
    train_only,
)
from .projector import PROJECTOR, save_projector
from .stage import Stage, StageSetup, logger, run_stage
from .training_data import load_image_datasets, make_image_collator


@dataclass
class AlignmentModelArguments:
    """The language model the projector is aligned to."""

    model_name_or_path: str = field(
        metadata={
            "help": "The stage-1 model (output of yuren_trainer.text_sft, LoRA merged), or upstream's released model "
            "(its own tower and projector): a directory or hub id."
        }
    )


def set_up(
    model_args: AlignmentModelArguments,
    vision_args: VisionTowerArguments,
    data_args: ImageDataArguments,
    args: SFTTrainingArguments,
) -> StageSetup:
    """Tokenizer, caption datasets, and the fused model with only its projector trainable."""
    tokenizer = load_yuren_tokenizer(model_args.model_name_or_path)
    release = is_upstream_checkpoint(model_args.model_name_or_path)
    if release:
        logger.info("starting from upstream's released model: its mm_vision_tower is the tower, --clip_model unused")
        image_seq_len = release_image_seq_len(model_args.model_name_or_path, tokenizer)
    else:
        image_seq_len = clip_image_seq_len(vision_args.clip_model)
    train_dataset, eval_dataset = load_image_datasets(data_args, args, tokenizer, image_seq_len=image_seq_len)
    if release:
        model = load_release(model_args.model_name_or_path, args, tokenizer)
    else:
        model = assemble_fused_model(model_args.model_name_or_path, vision_args, args)
    train_only(model, (f"{PROJECTOR}.",))
    collator = make_image_collator(data_args, args, tokenizer, model.config)
    return StageSetup(model, tokenizer, train_dataset, eval_dataset, collator, packing=data_args.packing)


def save_projector_file(setup: StageSetup, args: SFTTrainingArguments) -> None:
    """Write the projector alone beside the checkpoint, for stage 3's ``--projector_path``."""
    if args.should_save:
        logger.info("saved the projector alone to %s", save_projector(Path(args.output_dir)))


STAGE = Stage(
    "clip_sft",
    (AlignmentModelArguments, VisionTowerArguments, ImageDataArguments, SFTTrainingArguments),
    set_up,
    after_save=save_projector_file,
)


def main(argv: list[str] | None = None) -> None:
    """Run stage 2 with the flags in ``argv`` (default: the command line)."""
    run_stage(STAGE, argv)


if __name__ == "__main__":
    main()
