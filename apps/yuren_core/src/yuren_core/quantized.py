"""Recognising a quantized checkpoint when it is loaded.

Quantizing while loading (``load_model(..., load_8bit=True)`` on a bf16
checkpoint) reads every full-precision weight at every start. The ``quantize``
tool does that once and saves the result; such a checkpoint records how it was
quantized in its ``config.json`` (``quantization_config``), which is what
:func:`saved_quantization` reads: a checkpoint's name or path decides nothing.
"""

from __future__ import annotations

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
