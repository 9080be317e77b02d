"""``make-demo-model``: the web UI's demo model, the tiny YuRen model trained through stages 1-3 on the project's own data.

Built on first use from :func:`make_demo_model.pipeline_cache.cached_tiny_yuren` (the
pipeline the tests prove can see: it names the colour of shapes it has never
seen and answers whether a shape is of a colour; the tests train it into the same cache, so one machine trains it
once), then its final model is copied into ``--cache-dir``; the command prints the model's directory as its last line
of output (``uv run webui`` with no ``--model`` runs it). The entry is named after the pipeline's cache key (the
recipe's key and the training code's digest), so a changed recipe or trainer builds a new model instead of
serving a stale one; entries of other keys are removed once the new one is in
place.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from tqdm.auto import tqdm

from yuren_core.atomic import atomic_directory

from .pipeline import STEPS, TinyRecipe, TinyRun
from .pipeline_cache import cached_tiny_yuren, entry_key

logger = logging.getLogger("make_demo_model")

RECIPE = TinyRecipe()
ENTRY_PREFIX = "model-"
BUILD_LOG = "build.log"


def ensure_demo_model(cache_dir: Path) -> Path:
    """Return the demo checkpoint under ``cache_dir``, building it on first use (a few minutes on a CPU)."""
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{ENTRY_PREFIX}{entry_key(RECIPE)}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    log_file = cache_dir / BUILD_LOG
    logger.info("building the demo model into %s (first start only; details in %s)", target, log_file)
    run = _train_with_progress_bar(log_file)
    with atomic_directory(target) as staging:
        shutil.copytree(run.final, staging, dirs_exist_ok=True, ignore=_not_for_serving)
    _remove_other_entries(cache_dir, keep=target)
    return target


def _train_with_progress_bar(log_file: Path) -> TinyRun:
    """Get the pipeline's run from its cache with one progress bar on the console; training output goes to ``log_file``."""
    console = sys.stderr
    with (
        tqdm(total=len(STEPS), desc="demo model", unit="step", file=console) as bar,
        open(log_file, "w", encoding="utf-8") as log,
        redirect_stdout(log),
        redirect_stderr(log),
        _only_errors_logged(),
    ):

        def progress(index: int, name: str) -> None:
            bar.n = index
            bar.set_postfix_str(name)

        run = cached_tiny_yuren(RECIPE, progress=progress)
        bar.n = len(STEPS)
        bar.set_postfix_str("done")
    return run


@contextmanager
def _only_errors_logged() -> Iterator[None]:
    # The stages log their progress and the expected "missing weights" of a newly assembled model;
    # around the demo's progress bar that is noise. Their print()s and bars go to the build log.
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _not_for_serving(directory: str, names: list[str]) -> list[str]:
    """Training leftovers the demo does not need: checkpoints, trainer state, metrics."""
    return [n for n in names if n.startswith("checkpoint-") or n in ("training_args.bin", "trainer_state.json")]


def _remove_other_entries(cache_dir: Path, *, keep: Path) -> None:
    for entry in cache_dir.glob(f"{ENTRY_PREFIX}*"):
        if entry != keep and entry.is_dir():
            logger.info("removing the outdated demo model %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Build (or find) the demo model under ``--cache-dir``; print its directory."""
    parser = argparse.ArgumentParser(
        prog="make-demo-model",
        description="Build the web UI's demo model (once; later runs reuse it) and print its directory.",
    )
    parser.add_argument("--cache-dir", type=Path, required=True, help="where the demo model is built and cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    print(ensure_demo_model(args.cache_dir), flush=True)


if __name__ == "__main__":
    main()
