"""``convert-baichuan``: write baichuan-inc/Baichuan-7B (fused ``W_pack``) in the LLaMA layout prepare-base-model takes.

    convert-baichuan baichuan-inc/Baichuan-7B --output models/baichuan-llama-7b
    prepare-base-model --base models/baichuan-llama-7b

The work is :func:`prepare_base_model.baichuan.convert_baichuan`; this module parses the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from yuren_core.cli import exit_on

from .baichuan import BaichuanConversionError, convert_baichuan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="convert-baichuan", description=__doc__.splitlines()[0].strip("`: "))
    parser.add_argument("source", metavar="SRC", help="Baichuan-7B in its own layout: a directory or hub id")
    parser.add_argument("--output", required=True, type=Path, help="where to write the LLaMA-layout model")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    args = parser.parse_args(argv)
    with exit_on(parser.prog, BaichuanConversionError):
        target = convert_baichuan(args.source, args.output, overwrite=args.overwrite)
    print(f"done: {target}")


if __name__ == "__main__":
    main()
