"""Writing a directory so that it appears whole or not at all.

Models, merged checkpoints and caches are written into a temporary sibling
directory and renamed into place when complete, so an interrupted run never
leaves a half-written output that looks finished.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path


@contextmanager
def atomic_directory(target: str | PathLike) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; on success it replaces ``target``.

    On any error (or interrupt) the staging directory is removed and ``target``
    is left as it was. The caller decides beforehand whether replacing an
    existing ``target`` is allowed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_text(target: str | PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` through a temporary sibling file renamed into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=target.parent)
    try:
        with open(handle, "w", encoding="utf-8") as file:
            file.write(text)
        Path(staging).replace(target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
