"""Upstream's released model written as a self-contained YuRen checkpoint.

``SRC`` is a directory or hub id in upstream's format (``model_type:
"multimodal_llama"``, whose vision tower is fetched from ``mm_vision_tower``)
or already a YuRen checkpoint. The output holds everything, vision tower
weights and image preprocessing included, in safetensors with a fast
tokenizer: serving or training it needs no hub access. Weights keep their
stored dtype unless ``dtype`` says otherwise. The output is written to a
temporary directory beside it and renamed into place once complete.
"""

from __future__ import annotations

from pathlib import Path

from yuren_core.atomic import atomic_directory
from yuren_core.cli import torch_dtype


class ConvertError(RuntimeError):
    """The conversion cannot run; the message says which input and why."""


def convert(source: str, output: str | Path, *, dtype: str = "auto", overwrite: bool = False) -> Path:
    """Load ``source`` with :func:`yuren_core.loading.load_model` and save it, with its tokenizer, to ``output``."""
    from yuren_core.loading import load_model

    target = Path(output)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ConvertError(f"--output {target} exists and is not empty; pass --overwrite to replace it")
    print(f"[1/2] loading {source}", flush=True)
    try:
        model, tokenizer, _ = load_model(source, dtype=torch_dtype(dtype))
    except (OSError, ValueError) as error:
        raise ConvertError(f"{source}: {error}") from error
    with atomic_directory(target) as staging:
        print(f"[2/2] saving to {target}", flush=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target
