"""Stage 1: supervised fine-tuning of the language model on text conversations.

Run it as upstream did, under torchrun (flags in the project README)::

    torchrun --nproc_per_node=8 -m yuren_trainer.text_sft \\
      --model_name_or_path dist/yuren-7b-base --train_file train.json --validation_file validation.json \\
      --model_max_length 4096 ... --deepspeed apps/yuren_trainer/config/deepspeed_config.json \\
      --output_dir dist/yuren-7b-stage1

All weights train (with DeepSpeed, whose config takes its precision from
``--bf16``/``--fp16``), or with ``--use_lora True --lora_config ...`` a QLoRA
adapter on a 4-bit base. The run resumes from the last complete checkpoint in
``--output_dir`` by itself.
"""

from __future__ import annotations

import sys

import torch
from transformers import AutoModelForCausalLM, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled

from yuren_core.vocab import load_tokenizer, special_ids

from . import qlora
from .arguments import DataArguments, ModelArguments, SFTTrainingArguments, UsageError, parse_args
from .checkpoints import CheckpointCompletion
from .data import DataError
from .recipe import check_reporting, load_datasets, make_collator, setup_logging, train_and_save
from .segment_attention import use_for_packing
from .trainer import SFTTrainer


def compute_dtype(args) -> torch.dtype:
    """The dtype the precision flags ask for: bf16, fp16, or fp32."""
    if args.bf16:
        return torch.bfloat16
    if args.fp16:
        return torch.float16
    return torch.float32


def load_model(model_args: ModelArguments, args, tokenizer, *, modules_to_save: list[str] | None = None):
    """The model to train: the full model, or a QLoRA-wrapped 4-bit one (``modules_to_save`` train whole in it)."""
    if not model_args.use_lora:
        # DeepSpeed keeps its own fp32 master weights, so the model can load in half precision;
        # without it, mixed precision autocasts from fp32 weights.
        dtype = compute_dtype(args) if args.deepspeed else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, dtype=dtype)
        model.config.use_cache = False
        return model

    if is_deepspeed_zero3_enabled():
        raise UsageError(
            "--use_lora True quantizes the base to 4 bits, which DeepSpeed ZeRO-3 cannot partition; "
            "drop --deepspeed (plain torchrun data parallelism) or use apps/yuren_trainer/config/deepspeed_zero2.json"
        )
    settings = qlora.read_settings(model_args.lora_config)
    dtype = compute_dtype(args)
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        dtype=dtype,
        quantization_config=qlora.quantization_config(settings, dtype),
        device_map={"": args.device},
    )
    model.config.use_cache = False
    return qlora.apply_qlora(
        model,
        settings,
        trainable_token_ids=qlora.new_token_ids(tokenizer),
        gradient_checkpointing=args.gradient_checkpointing,
        modules_to_save=modules_to_save,
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, set up data and model, train, save."""
    model_args, data_args, args = parse_args(
        (ModelArguments, DataArguments, SFTTrainingArguments), argv, prog="python -m yuren_trainer.text_sft"
    )
    setup_logging(args)
    try:
        check_reporting(args)
        set_seed(args.seed)
        tokenizer = load_tokenizer(model_args.model_name_or_path)
        train_dataset, eval_dataset = load_datasets(data_args, args, tokenizer)
        model = load_model(model_args, args, tokenizer)
        if data_args.packing:
            use_for_packing(model)
        pad_token_id = special_ids(tokenizer).pad
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=make_collator(data_args, pad_token_id),
            processing_class=tokenizer,
            callbacks=[CheckpointCompletion()],
            pad_token_id=pad_token_id,
        )
        train_and_save(trainer, args)
    except (UsageError, DataError, qlora.QLoRAConfigError) as error:
        print(f"text_sft: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
