"""``quantize``: write an 8-bit or 4-bit copy of a YuRen checkpoint once, so serving it starts small.

    quantize dist/yuren-7b-stage3 --bits 8 --output dist/yuren-7b-stage3-8bit
    webui dist/yuren-7b-stage3-8bit          # loads the saved 8-bit weights directly

The language model's linear layers are quantized with bitsandbytes exactly as
``webui --load_8bit True`` (``--bits 4``: ``--load_4bit True``, NF4) would at
every start; the vision tower, projector and output head stay in full
precision. The output directory appears only once it is complete.
"""

from __future__ import annotations

import argparse

from yuren_core.cli import exit_on
from yuren_core.quantized import BITS

from .writing import save_quantized


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantize", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a full-precision YuRen checkpoint directory")
    parser.add_argument("--bits", type=int, choices=BITS, required=True, help="8 (LLM.int8) or 4 (NF4)")
    parser.add_argument("--output", required=True, help="directory to write the quantized checkpoint to")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    with exit_on(parser.prog, ValueError, FileExistsError, OSError):
        output = save_quantized(args.model, args.output, bits=args.bits, overwrite=args.overwrite)
    print(f"wrote the {args.bits}-bit checkpoint to {output}")


if __name__ == "__main__":
    main()
