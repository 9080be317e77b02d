"""The tiny pipeline's cache: trained once per key, whole or not at all, shared by concurrent builders, pruned."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from make_demo_model import pipeline, pipeline_cache
from make_demo_model.pipeline import TinyRecipe, TinyRun
from make_tiny_model import tiny_model


@pytest.fixture
def trainings(monkeypatch, tmp_path):
    """A fake training that writes a final model and a datasets cache; ``trainings.log`` gets a line per training."""
    log = tmp_path / "trainings.log"

    def fake_train(work_dir, recipe, *, progress=None):
        with open(log, "a") as file:
            file.write(f"{recipe.key()}\n")
        time.sleep(float(os.environ.get("FAKE_TRAINING_SECONDS", "0")))
        if os.environ.get("FAKE_TRAINING_FAILS"):
            raise RuntimeError("training interrupted")
        run = TinyRun(Path(work_dir))
        run.final.mkdir(parents=True)
        (run.final / "config.json").write_text(recipe.key())
        (run.root / "datasets-cache").mkdir()
        return run

    monkeypatch.setattr(pipeline_cache, "train_tiny_yuren", fake_train)
    return log


def test_the_first_use_trains_and_later_uses_reuse(trainings, tmp_path):
    run = pipeline_cache.cached_tiny_yuren(TinyRecipe(), tmp_path / "cache")
    assert run.root == tmp_path / "cache" / "tiny-pipeline" / pipeline_cache.entry_key(TinyRecipe())
    assert (run.final / "config.json").read_text() == TinyRecipe().key()
    assert not (run.root / "datasets-cache").exists()
    assert pipeline_cache.cached_tiny_yuren(TinyRecipe(), tmp_path / "cache") == run
    assert trainings.read_text().splitlines() == [TinyRecipe().key()]


def test_the_cache_directory_comes_from_the_environment(trainings, tmp_path, monkeypatch):
    monkeypatch.setenv("YUREN_CACHE_DIR", str(tmp_path / "shared"))
    assert pipeline_cache.default_cache_dir() == tmp_path / "shared"
    run = pipeline_cache.cached_tiny_yuren(TinyRecipe())
    assert run.root.parent == tmp_path / "shared" / "tiny-pipeline"
    monkeypatch.delenv("YUREN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pipeline_cache.default_cache_dir() == tmp_path / "xdg" / "yuren"


def test_an_interrupted_training_leaves_nothing_that_looks_finished(trainings, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINING_FAILS", "1")
    with pytest.raises(RuntimeError, match="interrupted"):
        pipeline_cache.cached_tiny_yuren(TinyRecipe(), tmp_path / "cache")
    assert [p.suffix for p in (tmp_path / "cache" / "tiny-pipeline").iterdir()] == [".lock"]
    monkeypatch.delenv("FAKE_TRAINING_FAILS")
    assert (pipeline_cache.cached_tiny_yuren(TinyRecipe(), tmp_path / "cache").final / "config.json").is_file()


def build(cache_dir: Path, results) -> None:
    results.put(str(pipeline_cache.cached_tiny_yuren(TinyRecipe(), cache_dir).root))


def test_a_second_builder_waits_for_the_first_and_reuses_its_run(trainings, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINING_SECONDS", "2")
    fork = multiprocessing.get_context("fork")  # the children keep this test's fake training
    results = fork.Queue()
    builders = [fork.Process(target=build, args=(tmp_path / "cache", results)) for _ in range(2)]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join(timeout=60)
    assert [b.exitcode for b in builders] == [0, 0]
    roots = {results.get(timeout=5) for _ in builders}
    assert len(roots) == 1 and (Path(roots.pop()) / "yes-no" / "config.json").is_file()
    assert trainings.read_text().splitlines() == [TinyRecipe().key()]


def test_keys_follow_the_recipe_and_the_training_code(tmp_path):
    assert pipeline_cache.entry_key(TinyRecipe()).startswith(TinyRecipe().key())
    assert pipeline_cache.entry_key(TinyRecipe(seed=1)) != pipeline_cache.entry_key(TinyRecipe())
    code = tmp_path / "package"
    (code / "sub").mkdir(parents=True)
    (code / "sub" / "stage.py").write_text("lr = 1\n")
    before = pipeline_cache.source_digest([code])
    (code / "sub" / "stage.py").write_text("lr = 2\n")
    assert pipeline_cache.source_digest([code]) != before
    (code / "sub" / "stage.py").write_text("lr = 1\n")
    assert pipeline_cache.source_digest([code]) == before
    (code / "sub" / "__pycache__").mkdir()
    (code / "sub" / "__pycache__" / "stage.cpython-312.pyc").write_bytes(b"compiled")
    assert pipeline_cache.source_digest([code]) == before


def test_keys_follow_the_code_of_both_tools(monkeypatch):
    # The pipeline lives in make_demo_model and builds its random base with make_tiny_model: a change to either retrains.
    digested = []
    monkeypatch.setattr(pipeline_cache, "source_digest", lambda folders: digested.extend(folders) or "digest")
    pipeline_cache.entry_key(TinyRecipe())
    assert {Path(pipeline.__file__).parent, Path(tiny_model.__file__).parent} <= set(digested)


def test_keys_follow_the_sample_data(tmp_path, monkeypatch):
    # The sample conversations train the tokenizer and stage 1, and live outside the package in a checkout.
    sample = tmp_path / "data"
    sample.mkdir()
    (sample / "sft_sample.json").write_text("[]")
    monkeypatch.setattr(pipeline_cache, "SAMPLE_DATA", sample)
    before = pipeline_cache.entry_key(TinyRecipe())
    (sample / "sft_sample.json").write_text("[{}]")
    assert pipeline_cache.entry_key(TinyRecipe()) != before


def test_entries_unused_for_a_week_are_removed(trainings, tmp_path):
    entries = tmp_path / "cache" / "tiny-pipeline"
    old, recent = entries / "v0-old", entries / "v0-recent"
    for entry, age_days in ((old, 8), (recent, 6)):
        entry.mkdir(parents=True)
        stamp = time.time() - age_days * 24 * 3600
        os.utime(entry, (stamp, stamp))
    run = pipeline_cache.cached_tiny_yuren(TinyRecipe(), tmp_path / "cache")
    assert sorted(p.name for p in entries.iterdir() if p.is_dir()) == sorted([recent.name, run.root.name])
