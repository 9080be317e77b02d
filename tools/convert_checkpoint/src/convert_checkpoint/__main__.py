"""``convert-checkpoint``: write upstream's released model as a self-contained YuRen checkpoint.

    convert-checkpoint pleisto/yuren-baichuan-7b --output dist/yuren-baichuan-7b

``SRC`` is a directory or hub id in upstream's format (``model_type:
"multimodal_llama"``, whose vision tower is fetched from ``mm_vision_tower``)
or already a YuRen checkpoint. The output holds everything, vision tower
weights and image preprocessing included, in safetensors with a fast
tokenizer: serving or training it needs no hub access. Weights keep their
stored dtype unless ``--dtype`` says otherwise. The output is written to a
temporary directory beside it and renamed into place once complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from yuren_core.atomic import atomic_directory

DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


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
        model, tokenizer, _ = load_model(source, dtype=DTYPES[dtype])
    except (OSError, ValueError) as error:
        raise ConvertError(f"{source}: {error}") from error
    with atomic_directory(target) as staging:
        print(f"[2/2] saving to {target}", flush=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="convert-checkpoint", description=__doc__.splitlines()[0].strip("`: "))
    parser.add_argument("source", metavar="SRC", help="upstream's released model: a directory or hub id")
    parser.add_argument("--output", required=True, type=Path, help="where to write the YuRen checkpoint")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="auto", help="dtype to save in (default: the stored one)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    args = parser.parse_args(argv)
    try:
        target = convert(args.source, args.output, dtype=args.dtype, overwrite=args.overwrite)
    except ConvertError as error:
        print(f"convert-checkpoint: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"done: {target}")


if __name__ == "__main__":
    main()
