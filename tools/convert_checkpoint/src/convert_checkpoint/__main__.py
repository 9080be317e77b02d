"""``convert-checkpoint``: write upstream's released model as a self-contained YuRen checkpoint.

    convert-checkpoint pleisto/yuren-baichuan-7b --output dist/yuren-baichuan-7b

The work is :func:`convert_checkpoint.convert.convert`; this module parses the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from yuren_core.cli import DTYPES, exit_on

from .convert import ConvertError, convert


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="convert-checkpoint", description=__doc__.splitlines()[0].strip("`: "))
    parser.add_argument("source", metavar="SRC", help="upstream's released model: a directory or hub id")
    parser.add_argument("--output", required=True, type=Path, help="where to write the YuRen checkpoint")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="auto", help="dtype to save in (default: the stored one)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    args = parser.parse_args(argv)
    with exit_on(parser.prog, ConvertError):
        target = convert(args.source, args.output, dtype=args.dtype, overwrite=args.overwrite)
    print(f"done: {target}")


if __name__ == "__main__":
    main()
