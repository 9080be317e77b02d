"""Quantized checkpoints: writing one once, and recognising one when it is loaded.

Quantizing while loading (``load_model(..., load_8bit=True)`` on a bf16
checkpoint) reads every full-precision weight at every start. ``quantize``
does that once and saves the result; such a checkpoint records how it was
quantized in its ``config.json`` (``quantization_config``), which is what
:func:`saved_quantization` reads: a checkpoint's name or path decides nothing.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from .atomic import atomic_directory

BITS = (8, 4)


def saved_quantization(config) -> int | None:
    """The bits (8 or 4) a checkpoint's config says its weights were saved in; ``None`` for full precision.

    Raises ``ValueError`` for a ``quantization_config`` that is not bitsandbytes 8-bit or 4-bit.
    """
    saved = getattr(config, "quantization_config", None)
    if not saved:
        return None
    settings = saved if isinstance(saved, dict) else saved.to_dict()
    if settings.get("quant_method") == "bitsandbytes":
        if settings.get("load_in_8bit"):
            return 8
        if settings.get("load_in_4bit"):
            return 4
    raise ValueError(
        f"config.json's quantization_config {settings} is not bitsandbytes 8-bit or 4-bit; "
        "YuRen loads only those (or full precision)"
    )


def save_quantized(model_path: str | PathLike, output: str | PathLike, *, bits: int, overwrite: bool = False) -> Path:
    """Quantize the full-precision YuRen checkpoint ``model_path`` to ``bits`` (8 or 4) and save it to ``output``.

    The language model's linear layers are quantized exactly as
    ``load_model(..., load_8bit=True)`` (or ``load_4bit``) does; the
    tokenizer is saved beside the weights. ``output`` appears whole or not at
    all. Returns ``output``.
    """
    from transformers import AutoConfig

    from .loading import load_model

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
