"""The tiny pipeline trained once per machine: one cache shared by the demo model and the tests.

Training the tiny model through stages 1-3 (:func:`~make_demo_model.pipeline.train_tiny_yuren`) takes minutes on a
CPU, and both the web UI's demo model and the tests' multimodal fixtures need it. :func:`cached_tiny_yuren` trains
it once per key and keeps the whole run (every stage's output, the tiny base, the shapes data) under
``tiny-pipeline/`` in the cache directory: ``$YUREN_CACHE_DIR``, else ``$XDG_CACHE_HOME/yuren``, else
``~/.cache/yuren``. Users of an entry only read it.

An entry's key is the recipe's key plus a digest of everything else that decides the result: the source of the
packages that build and train the model (this tool, make_tiny_model, yuren_core, yuren_trainer, prepare_base_model)
and the versions of the libraries they train with. Changed code trains anew rather than reuse a run the code would no longer make.

An entry is trained in a staging directory and renamed into place when complete (:mod:`yuren_core.atomic`), so an
interrupted build leaves nothing that looks finished; a lock file beside it makes a second builder wait for the
first and then reuse its entry. Entries nobody has used for a week are removed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from filelock import FileLock, Timeout

from make_tiny_model.sample_data import SAMPLE_DATA
from yuren_core.atomic import atomic_directory

from .pipeline import TinyRecipe, TinyRun, train_tiny_yuren

logger = logging.getLogger("make_demo_model")

CACHE_ENV = "YUREN_CACHE_DIR"
ENTRIES = "tiny-pipeline"
UNUSED_FOR = 7 * 24 * 3600

# The packages whose code runs in a pipeline build, and the libraries whose versions can change what it trains.
TRAINING_PACKAGES = ("make_demo_model", "make_tiny_model", "prepare_base_model", "yuren_core", "yuren_trainer")
TRAINING_LIBRARIES = (
    "torch", "transformers", "tokenizers", "datasets", "accelerate", "peft", "open_clip_torch", "pillow", "numpy",
)  # fmt: skip


def default_cache_dir() -> Path:
    """``$YUREN_CACHE_DIR``, else ``$XDG_CACHE_HOME/yuren``, else ``~/.cache/yuren``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yuren"


def source_digest(folders: Iterable[Path]) -> str:
    """A digest of every file under ``folders`` (names and bytes; compiled files left out)."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def entry_key(recipe: TinyRecipe) -> str:
    """The cache key of ``recipe``'s run: its key, then a digest of the training code and library versions."""
    folders = [Path(importlib.util.find_spec(name).origin).parent for name in TRAINING_PACKAGES]
    # The sample conversations train the tokenizer and stage 1; a checkout keeps them outside the package.
    folders.append(Path(str(SAMPLE_DATA)))
    digest = hashlib.sha256(source_digest(folders).encode())
    for library in TRAINING_LIBRARIES:
        try:
            digest.update(f"{library}=={version(library)}\n".encode())
        except PackageNotFoundError:
            digest.update(f"{library} absent\n".encode())
    return f"{recipe.key()}-{digest.hexdigest()[:12]}"


def cached_tiny_yuren(
    recipe: TinyRecipe,
    cache_dir: str | os.PathLike | None = None,
    *,
    progress: Callable[[int, str], None] | None = None,
) -> TinyRun:
    """The run of ``recipe`` from the cache under ``cache_dir`` (default :func:`default_cache_dir`), trained on a miss.

    ``progress`` is passed to :func:`~make_demo_model.pipeline.train_tiny_yuren` when training happens.
    """
    entries = Path(cache_dir if cache_dir is not None else default_cache_dir()) / ENTRIES
    target = entries / entry_key(recipe)
    entries.mkdir(parents=True, exist_ok=True)
    lock = FileLock(entries / f"{target.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process building the tiny pipeline into %s", target)
        lock.acquire()
    try:
        if not target.is_dir():
            logger.info("training the tiny pipeline into %s (once per machine and recipe)", target)
            with atomic_directory(target) as staging:
                run = train_tiny_yuren(staging, recipe, progress=progress)
                # The datasets cache is the stages' scratch; nothing reads it after training.
                shutil.rmtree(run.root / "datasets-cache", ignore_errors=True)
        os.utime(target)
    finally:
        lock.release()
    _remove_unused(entries, keep=target)
    return TinyRun(target)


def wait_for_build(recipe: TinyRecipe, cache_dir: str | os.PathLike | None = None) -> None:
    """Return once no process is building ``recipe``'s entry under ``cache_dir`` (at once when none is)."""
    entries = Path(cache_dir if cache_dir is not None else default_cache_dir()) / ENTRIES
    entries.mkdir(parents=True, exist_ok=True)
    with FileLock(entries / f"{entry_key(recipe)}.lock"):
        pass


def _remove_unused(entries: Path, *, keep: Path) -> None:
    """Remove entries (and builds killed midway) that nobody has used for :data:`UNUSED_FOR` seconds."""
    cutoff = time.time() - UNUSED_FOR
    for entry in entries.iterdir():
        if entry != keep and entry.is_dir() and entry.stat().st_mtime < cutoff:
            logger.info("removing the tiny pipeline %s, unused for a week", entry)
            shutil.rmtree(entry, ignore_errors=True)
            Path(f"{entry}.lock").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m make_demo_model.pipeline_cache [--cache-dir DIR]``: get the default recipe's run; print its root.

    The tests start this in the background to train the pipeline while the tests that do not need it run.
    """
    parser = argparse.ArgumentParser(
        prog="python -m make_demo_model.pipeline_cache", description=main.__doc__.splitlines()[0]
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $YUREN_CACHE_DIR or ~/.cache/yuren")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(cached_tiny_yuren(TinyRecipe(), args.cache_dir).root, flush=True)


if __name__ == "__main__":
    main()
