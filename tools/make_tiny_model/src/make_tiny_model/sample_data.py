"""The project's own sample conversations (``data/sft_sample.json``, Apache-2.0), shipped inside this package.

They train the tiny tokenizer and the demo model's stage 1; ``data/README.md``
beside them describes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

SAMPLE_CONVERSATIONS = resources.files("make_tiny_model") / "data" / "sft_sample.json"


@contextmanager
def sample_conversations() -> Iterator[Path]:
    """A file path to the sample conversations, for as long as the block runs (a copy if the package is zipped)."""
    with resources.as_file(SAMPLE_CONVERSATIONS) as path:
        yield path
