"""``prepare-base-model``: add YuRen's ChatML and image tokens to a LLaMA-layout base model.

The work is :func:`prepare_base_model.prepare.prepare`; this module parses the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from yuren_core.cli import exit_on
from yuren_core.constants import DEFAULT_BASE_MODEL, DEFAULT_BASE_OUTPUT

from .prepare import BaseModelNotFound, prepare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prepare-base-model", description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE_MODEL, help="base model: local directory or hub id")
    parser.add_argument("--output", type=Path, default=Path(DEFAULT_BASE_OUTPUT), help="where to write the result")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    args = parser.parse_args(argv)
    with exit_on(parser.prog, BaseModelNotFound, FileExistsError):
        prepare(args.base, args.output, overwrite=args.overwrite)
    print(f"done: {args.output}")


if __name__ == "__main__":
    main()
