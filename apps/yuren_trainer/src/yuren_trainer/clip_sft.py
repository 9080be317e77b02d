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

import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import set_seed

from yuren_core.vocab import special_ids

from .arguments import SFTTrainingArguments, UsageError, parse_args
from .checkpoints import CheckpointCompletion
from .data import DataError
from .multimodal import (
    PROJECTOR,
    ImageDataArguments,
    VisionTowerArguments,
    assemble_fused_model,
    clip_image_seq_len,
    load_image_datasets,
    load_yuren_tokenizer,
    make_image_collator,
    save_projector,
    train_only,
)
from .recipe import check_reporting, logger, setup_logging, train_and_save
from .segment_attention import use_for_packing
from .trainer import SFTTrainer


@dataclass
class AlignmentModelArguments:
    """The language model the projector is aligned to."""

    model_name_or_path: str = field(
        metadata={"help": "The stage-1 model (output of yuren_trainer.text_sft, LoRA merged): a directory or hub id."}
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, assemble the fused model, train the projector, save checkpoint and projector."""
    model_args, vision_args, data_args, args = parse_args(
        (AlignmentModelArguments, VisionTowerArguments, ImageDataArguments, SFTTrainingArguments),
        argv,
        prog="python -m yuren_trainer.clip_sft",
    )
    setup_logging(args)
    try:
        check_reporting(args)
        tokenizer = load_yuren_tokenizer(model_args.model_name_or_path)
        image_seq_len = clip_image_seq_len(vision_args.clip_model)
        train_dataset, eval_dataset = load_image_datasets(data_args, args, tokenizer, image_seq_len=image_seq_len)
        set_seed(args.seed)
        model = assemble_fused_model(model_args.model_name_or_path, vision_args, args)
        if data_args.packing:
            use_for_packing(model)
        train_only(model, (f"{PROJECTOR}.",))
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=make_image_collator(data_args, args, tokenizer, model.config),
            processing_class=tokenizer,
            callbacks=[CheckpointCompletion()],
            pad_token_id=special_ids(tokenizer).pad,
        )
        train_and_save(trainer, args)
        if args.should_save:
            logger.info("saved the projector alone to %s", save_projector(Path(args.output_dir)))
    except (UsageError, DataError) as error:
        print(f"clip_sft: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
