"""Loading where YuRen itself reports what is wrong, so transformers' own report stays quiet.

Loading upstream's release reads a CLIP model whose text half YuRen leaves out,
and the language model before its vision tower is filled in: transformers'
load report would list every one of those weights as UNEXPECTED or MISSING,
although nothing is wrong. The callers check the loading info themselves and
raise an error naming what really is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from transformers.utils import logging as transformers_logging


@contextmanager
def reported_by_the_caller() -> Iterator[None]:
    """Within the block, transformers logs errors only (its public verbosity setting, restored after)."""
    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)
