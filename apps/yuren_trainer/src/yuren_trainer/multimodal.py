"""What stages 2 and 3 share: their extra flags, image data, the fused model, the projector file.

Stage 2 (:mod:`yuren_trainer.clip_sft`) assembles the fused model from a
stage-1 model and an open_clip vision tower; stage 3
(:mod:`yuren_trainer.multimodal_sft`) starts from stage 2's output, or
assembles the same way and loads a projector file. Both read LLaVA-format
records whose images are checked up front and loaded per batch.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import open_clip
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers.integrations.deepspeed import (
    is_deepspeed_zero3_enabled,
    set_hf_deepspeed_config,
    unset_hf_deepspeed_config,
)

from yuren_core.chatml import image_block
from yuren_core.constants import DEFAULT_CLIP_MODEL
from yuren_core.loading import build_fused_model
from yuren_core.vision import DEFAULT_MAX_PIXELS, ImageProcessor, num_patches
from yuren_core.vocab import load_tokenizer, special_ids

from .arguments import DataArguments, UsageError
from .data import read_conversations
from .images import FolderImageLoader, ImageInEveryBatch, check_images
from .recipe import load_data_file, load_datasets, make_collator
from .text_sft import compute_dtype

logger = logging.getLogger("yuren_trainer")

PROJECTOR = "mm_projector"
PROJECTOR_FILE = "mm_projector.safetensors"


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


@dataclass
class ImageDataArguments(DataArguments):
    """``DataArguments`` plus where the images are and how large they may be."""

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


def check_data_images(files: list[str], data_args: ImageDataArguments, args) -> None:
    """Check every image the records of ``files`` name (main process of each node; the others wait)."""
    with args.main_process_first(desc="checking images"):
        if args.local_process_index == 0:
            for path in files:
                count = check_images(
                    read_conversations(path), data_args.image_folder, max_pixels=data_args.max_image_pixels
                )
                logger.info("%s: %d image file(s) checked", path, count)


def load_image_datasets(
    data_args: ImageDataArguments,
    args,
    tokenizer,
    *,
    image_seq_len: int,
    text_train_file: str | None = None,
):
    """Check the images, then tokenize ``--train_file`` (+ ``text_train_file``) and ``--validation_file``.

    The training rows are the image conversations followed by the text ones;
    the Trainer's sampler mixes them.
    """
    files = [f for f in (data_args.train_file, data_args.validation_file, text_train_file) if f]
    check_data_images(files, data_args, args)
    train, validation = load_datasets(data_args, args, tokenizer, image_seq_len=image_seq_len)
    if text_train_file:
        text = load_data_file("text", text_train_file, data_args, args, tokenizer, image_seq_len=image_seq_len)
        train = datasets.concatenate_datasets([train, text])
    return train, validation


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


def make_image_collator(data_args: ImageDataArguments, args, tokenizer, config):
    """The ``--packing`` collator, loading images as the model ``config`` says; with several ranks, every batch has one.

    Images are preprocessed as serving will (the config's preprocessing), with
    the ``--max_image_pixels`` limit the up-front check used.
    """
    processor = ImageProcessor.from_config(config, max_pixels=data_args.max_image_pixels)
    ids = special_ids(tokenizer)
    collator = make_collator(data_args, ids.pad, image_loader=FolderImageLoader(processor, data_args.image_folder))
    if args.world_size > 1:
        collator = ImageInEveryBatch(
            collator, image_block=image_block(ids, config.image_seq_len), image_size=processor.image_size
        )
    return collator


def save_projector(output_dir: Path) -> Path:
    """Copy the projector's weights out of the saved checkpoint in ``output_dir`` into ``mm_projector.safetensors``.

    Read back from the checkpoint just written, so it works however the
    weights were distributed while training (ZeRO-3 shards included).
    """
    output_dir = Path(output_dir)
    tensors = {}
    for shard in _checkpoint_shards(output_dir):
        with safe_open(shard, framework="pt") as weights:
            for key in weights.keys():
                if key.startswith(f"{PROJECTOR}."):
                    tensors[key] = weights.get_tensor(key)
    if not tensors:
        raise RuntimeError(f"the checkpoint in {output_dir} holds no {PROJECTOR} weights")
    target = output_dir / PROJECTOR_FILE
    save_file(tensors, target, metadata={"format": "pt"})
    return target


def _checkpoint_shards(output_dir: Path) -> list[Path]:
    index = output_dir / "model.safetensors.index.json"
    if index.is_file():
        return sorted({output_dir / name for name in json.loads(index.read_text())["weight_map"].values()})
    return [output_dir / "model.safetensors"]


def load_projector(model, path: str | Path) -> None:
    """Load projector weights saved by stage 2 (``mm_projector.safetensors``) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--projector_path {path}: no such file (stage 2 writes {PROJECTOR_FILE} into its output)")
    tensors = load_file(path)
    prefix = f"{PROJECTOR}."
    state = {key.removeprefix(prefix): value for key, value in tensors.items()}
    expected = {key: tuple(value.shape) for key, value in model.mm_projector.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    if found != expected:
        raise UsageError(
            f"--projector_path {path} holds {found}, but this model's projector needs {expected}: "
            "was it trained with another stage-1 model or --clip_model?"
        )
    model.mm_projector.load_state_dict(state)
