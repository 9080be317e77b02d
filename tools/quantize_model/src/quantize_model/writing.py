"""Writing a quantized copy of a YuRen checkpoint (what the ``quantize`` command does)."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from transformers import AutoConfig

from yuren_core.atomic import atomic_directory
from yuren_core.loading import load_model
from yuren_core.quantized import BITS, saved_quantization


def save_quantized(model_path: str | PathLike, output: str | PathLike, *, bits: int, overwrite: bool = False) -> Path:
    """Quantize the full-precision YuRen checkpoint ``model_path`` to ``bits`` (8 or 4) and save it to ``output``.

    The language model's linear layers are quantized exactly as
    ``load_model(..., load_8bit=True)`` (or ``load_4bit``) does; the
    tokenizer is saved beside the weights. ``output`` appears whole or not at
    all. Returns ``output``.
    """
    if bits not in BITS:
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; choose another output directory or allow overwriting")
    already = saved_quantization(AutoConfig.from_pretrained(str(model_path)))
    if already is not None:
        raise ValueError(
            f"{model_path} is already a {already}-bit checkpoint (its config.json has a quantization_config); "
            "quantize the full-precision checkpoint it was made from"
        )
    model, tokenizer, _ = load_model(model_path, load_8bit=bits == 8, load_4bit=bits == 4)
    with atomic_directory(output) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return output
