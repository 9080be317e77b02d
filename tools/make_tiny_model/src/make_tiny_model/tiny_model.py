"""``make-tiny-model --output DIR``: write DIR/base (tiny LLaMA) and DIR/clip (tiny open_clip ViT)."""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

from .clip import build_tiny_clip
from .llm import build_tiny_base, corpus_lines
from .sample_data import sample_conversations
from .shapes import vocabulary_lines


def main(argv: list[str] | None = None) -> None:
    """Build the tiny base and vision tower the flags in ``argv`` describe (default: the command line)."""
    parser = argparse.ArgumentParser(prog="make-tiny-model", description=__doc__)
    parser.add_argument("--output", type=Path, required=True, help="directory to write base/ and clip/ into")
    parser.add_argument(
        "--corpus",
        type=Path,
        nargs="+",
        default=None,
        help="ShareGPT JSON files to train the sentencepiece tokenizer on (default: the project's sample data)",
    )
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--intermediate-size", type=int, default=192)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--vision-width", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    missing = [str(p) for p in args.corpus or () if not p.is_file()]
    if missing:
        parser.error(f"tokenizer corpus not found: {', '.join(missing)} (pass --corpus with ShareGPT JSON files)")
    with ExitStack() as stack:
        corpus = args.corpus or [stack.enter_context(sample_conversations())]
        lines = corpus_lines(corpus)
    base = build_tiny_base(
        args.output / "base",
        lines + vocabulary_lines(),
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        seed=args.seed,
    )
    clip = build_tiny_clip(
        args.output / "clip",
        image_size=args.image_size,
        patch_size=args.patch_size,
        width=args.vision_width,
        layers=args.vision_layers,
        seed=args.seed,
    )
    print(f"tiny base model: {base}\ntiny open_clip vision model: {clip} (use it as local-dir:{clip})")


if __name__ == "__main__":
    main()
