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

from yuren_core.vocab import load_tokenizer, special_ids

from .arguments import DataArguments, ModelArguments, SFTTrainingArguments
from .models import load_model_to_train
from .stage import Stage, StageSetup, run_stage
from .training_data import load_datasets, make_collator


def set_up(model_args: ModelArguments, data_args: DataArguments, args: SFTTrainingArguments) -> StageSetup:
    """Tokenizer, text datasets and the model (whole, or QLoRA-wrapped)."""
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    train_dataset, eval_dataset = load_datasets(data_args, args, tokenizer)
    model = load_model_to_train(model_args, args, tokenizer)
    collator = make_collator(data_args, special_ids(tokenizer).pad)
    return StageSetup(model, tokenizer, train_dataset, eval_dataset, collator, packing=data_args.packing)


STAGE = Stage("text_sft", (ModelArguments, DataArguments, SFTTrainingArguments), set_up)


def main(argv: list[str] | None = None) -> None:
    """Run stage 1 with the flags in ``argv`` (default: the command line)."""
    run_stage(STAGE, argv)


if __name__ == "__main__":
    main()
