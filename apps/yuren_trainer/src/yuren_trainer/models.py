"""The model and tokenizer a stage trains: loaded, or assembled from a text model and a vision tower, then frozen in part.

:func:`load_model_to_train` reads a saved model (stage 1's base, stage 3's
YuRen checkpoint) whole or QLoRA-wrapped; :func:`assemble_fused_model` joins a
LLaMA model and an open_clip tower (stage 2, stage 3 with ``--projector_path``);
:func:`load_release` reads upstream's released model (stages 2 and 3 may start from it).
Serving loads models with :func:`yuren_core.loading.load_model` instead.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import open_clip
import torch
from transformers.integrations.deepspeed import (
    is_deepspeed_zero3_enabled,
    set_hf_deepspeed_config,
    unset_hf_deepspeed_config,
)

from yuren_core.loading import build_fused_model, load_causal_lm
from yuren_core.upstream import upstream_config
from yuren_core.vision import num_patches
from yuren_core.vocab import load_tokenizer, special_ids

from . import qlora
from .arguments import ModelArguments, UsageError, VisionTowerArguments

logger = logging.getLogger("yuren_trainer")


def compute_dtype(args) -> torch.dtype:
    """The dtype the precision flags ask for: bf16, fp16, or fp32."""
    if args.bf16:
        return torch.bfloat16
    if args.fp16:
        return torch.float16
    return torch.float32


def load_model_to_train(model_args: ModelArguments, args, tokenizer, *, modules_to_save: list[str] | None = None):
    """The model to train: the full model, or a QLoRA-wrapped 4-bit one (``modules_to_save`` train whole in it)."""
    if not model_args.use_lora:
        # DeepSpeed keeps its own fp32 master weights, so the model can load in half precision;
        # without it, mixed precision autocasts from fp32 weights.
        dtype = compute_dtype(args) if args.deepspeed else torch.float32
        model = load_causal_lm(model_args.model_name_or_path, tokenizer, dtype=dtype)
        model.config.use_cache = False
        return model

    if is_deepspeed_zero3_enabled():
        raise UsageError(
            "--use_lora True quantizes the base to 4 bits, which DeepSpeed ZeRO-3 cannot partition; "
            "drop --deepspeed (plain torchrun data parallelism) or use apps/yuren_trainer/config/deepspeed_zero2.json"
        )
    settings = qlora.read_settings(model_args.lora_config)
    dtype = compute_dtype(args)
    model = load_causal_lm(
        model_args.model_name_or_path,
        tokenizer,
        dtype=dtype,
        quantization_config=qlora.base_quantization_config(settings, dtype),
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


def load_yuren_tokenizer(model_name_or_path: str):
    """The model's tokenizer, refused clearly if it lacks YuRen's special tokens."""
    tokenizer = load_tokenizer(model_name_or_path)
    try:
        special_ids(tokenizer)
    except ValueError as error:
        raise UsageError(f"--model_name_or_path {model_name_or_path}: {error}") from None
    return tokenizer


def clip_image_seq_len(clip_model: str) -> int:
    """Patch tokens per image for the open_clip model ``clip_model``, read from its config alone."""
    config = open_clip.get_model_config(clip_model)
    if config is None:
        raise UsageError(f"--clip_model {clip_model}: no open_clip model config found there")
    return num_patches(config)


@contextmanager
def outside_zero3(args):
    """Build a model unpartitioned even under ZeRO-3; DeepSpeed partitions it when training starts.

    ``from_pretrained`` partitions weights as it loads them under ZeRO-3, after
    which :func:`build_fused_model` could not copy the vision tower's weights in.
    """
    if not is_deepspeed_zero3_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(args.hf_deepspeed_config)


def assemble_fused_model(base_path: str, vision_args: VisionTowerArguments, args):
    """Join the LLaMA model at ``base_path`` and the ``--clip_model`` tower (projector random) for training.

    Under ZeRO-3 every rank holds the whole model until training starts.
    """
    # DeepSpeed keeps fp32 master weights, so the model can load in half precision; plain runs autocast from fp32.
    dtype = compute_dtype(args) if args.deepspeed else torch.float32
    with outside_zero3(args):
        try:
            model, _, _ = build_fused_model(
                base_path,
                vision_args.clip_model,
                vision_feature_layer=vision_args.vision_feature_layer,
                image_pad_to_square=vision_args.image_pad_to_square,
                dtype=dtype,
            )
        except ValueError as error:
            raise UsageError(f"--model_name_or_path {base_path}: {error}") from None
    model.config.use_cache = False
    return model


def release_image_seq_len(path: str, tokenizer) -> int:
    """Patch tokens per image of upstream's released model at ``path`` (its ``mm_vision_tower`` decides)."""
    try:
        return upstream_config(path, tokenizer)[0].image_seq_len
    except ValueError as error:
        raise UsageError(f"--model_name_or_path {path}: {error}") from None


def load_release(path: str, args, tokenizer):
    """Upstream's released model, whole, to train on: its projector continues from the release's.

    Its vision tower is copied in after loading, which ZeRO-3's partitioned
    loading would not allow, so every rank holds the whole model until training starts.
    """
    dtype = compute_dtype(args) if args.deepspeed else torch.float32
    with outside_zero3(args):
        model = load_causal_lm(path, tokenizer, dtype=dtype)
    model.config.use_cache = False
    return model


def train_only(model, prefixes: tuple[str, ...]) -> None:
    """Freeze every parameter except those whose name starts with one of ``prefixes``; log the counts."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(prefixes))
    log_trainable(model)


def log_trainable(model) -> None:
    """Log how many parameters train, and in which top-level modules."""
    trainable = [(name, p.numel()) for name, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    modules = sorted({name.split(".")[0] for name, _ in trainable})
    logger.info("%d of %d parameters train, in %s", sum(n for _, n in trainable), total, ", ".join(modules))
