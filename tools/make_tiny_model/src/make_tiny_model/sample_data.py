"""The project's own sample conversations (``data/sft_sample.json`` at the repository's top, Apache-2.0).

They train the tiny tokenizer and the demo model's stage 1; ``data/README.md``
beside them describes them. The package's wheel carries ``data/`` inside it
(hatch ``force-include``); a checkout reads the repository's folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path


def _sample_data() -> Traversable:
    packaged = resources.files("make_tiny_model") / "data"
    if packaged.joinpath("sft_sample.json").is_file():
        return packaged
    # An editable install runs from the checkout: src/make_tiny_model/ -> the repository's top.
    return Path(__file__).resolve().parents[4] / "data"


SAMPLE_DATA = _sample_data()
SAMPLE_CONVERSATIONS = SAMPLE_DATA / "sft_sample.json"


@contextmanager
def sample_conversations() -> Iterator[Path]:
    """A file path to the sample conversations, for as long as the block runs (a copy if the package is zipped)."""
    with resources.as_file(SAMPLE_CONVERSATIONS) as path:
        yield path
