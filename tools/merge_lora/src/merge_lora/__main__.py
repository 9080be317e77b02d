"""``merge-lora``: fold a trained (Q)LoRA adapter into its full-precision base model.

The work is :func:`merge_lora.merge.merge`; this module parses the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from yuren_core.cli import DTYPES, exit_on

from .merge import MergeError, merge


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="merge-lora", description=__doc__.splitlines()[0])
    parser.add_argument("--base-model-path", required=True, help="the full-precision base the adapter was trained on")
    parser.add_argument("--lora-path", required=True, help="the adapter directory (the trainer's --output_dir)")
    parser.add_argument("--target-model-path", required=True, type=Path, help="where to write the merged model")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="auto", help="dtype to merge and save in (default: the base's)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty target directory")
    args = parser.parse_args(argv)
    with exit_on(parser.prog, MergeError):
        target = merge(
            args.base_model_path, args.lora_path, args.target_model_path, dtype=args.dtype, overwrite=args.overwrite
        )
    print(f"done: {target}")


if __name__ == "__main__":
    main()
