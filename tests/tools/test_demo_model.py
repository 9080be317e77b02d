"""``make-demo-model``: the web UI's demo model, built once, whole or not at all, rebuilt when the recipe changes.

Training itself is ``make_demo_model.pipeline.train_tiny_yuren`` (through the pipeline cache the tests share),
whose result the trainer tests check (it names the colour of unseen shapes); here a stand-in
with the same signature writes a small fake stage-3 output.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from make_demo_model import demo_model as demo
from make_demo_model import pipeline_cache
from make_demo_model.pipeline import STEPS, TinyRecipe, TinyRun, train_tiny_yuren


@pytest.fixture
def builds(monkeypatch, tmp_path):
    """Replace the training with a fake; the list records each build's recipe key (and can make it fail)."""
    monkeypatch.setenv(pipeline_cache.CACHE_ENV, str(tmp_path / "pipelines"))
    calls: list = []

    def fake_train(work_dir, recipe, *, progress=None, show_training_bars=False):
        inspect.signature(train_tiny_yuren).bind(work_dir, recipe, progress=progress)
        for index, name in enumerate(STEPS):
            progress(index, name)
            print(f"training output of {name}")
        if calls and calls[-1] == "fail next":
            calls.pop()
            raise RuntimeError("training interrupted")
        run = TinyRun(Path(work_dir))
        run.final.mkdir(parents=True)
        (run.final / "config.json").write_text(json.dumps({"model_type": "yuren", "recipe": recipe.key()}))
        (run.final / "trainer_state.json").write_text("{}")
        (run.final / "checkpoint-10").mkdir()
        calls.append(recipe.key())
        return run

    monkeypatch.setattr(pipeline_cache, "train_tiny_yuren", fake_train)
    return calls


def test_the_first_start_builds_and_later_starts_reuse_it(builds, tmp_path, capsys):
    model = demo.ensure_demo_model(tmp_path / "cache")
    assert json.loads((model / "config.json").read_text())["recipe"] == demo.RECIPE.key()
    assert model.name == f"{demo.ENTRY_PREFIX}{pipeline_cache.entry_key(demo.RECIPE)}"
    # Only what serving needs is kept; the build's work files stay in the pipeline cache.
    assert sorted(p.name for p in model.iterdir()) == ["config.json"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [demo.BUILD_LOG, model.name]
    # One progress bar on the console; the stages' own output goes to the build log.
    console = capsys.readouterr()
    assert "demo model" in console.err and "training output" not in console.out + console.err
    assert "training output of stage 3: multimodal SFT" in (tmp_path / "cache" / demo.BUILD_LOG).read_text()

    assert demo.ensure_demo_model(tmp_path / "cache") == model
    # Another demo directory copies the same cached pipeline's model: still one training.
    assert (demo.ensure_demo_model(tmp_path / "other") / "config.json").read_text() == (
        model / "config.json"
    ).read_text()
    assert builds == [demo.RECIPE.key()]


def test_an_interrupted_build_leaves_nothing_that_looks_finished(builds, tmp_path):
    builds.append("fail next")
    with pytest.raises(RuntimeError, match="interrupted"):
        demo.ensure_demo_model(tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [demo.BUILD_LOG]
    model = demo.ensure_demo_model(tmp_path / "cache")
    assert (model / "config.json").is_file()


def test_a_changed_recipe_builds_a_new_model_and_drops_the_old(builds, tmp_path, monkeypatch):
    old = demo.ensure_demo_model(tmp_path / "cache")
    monkeypatch.setattr(demo, "RECIPE", TinyRecipe(train_images=demo.RECIPE.train_images + 1))
    new = demo.ensure_demo_model(tmp_path / "cache")
    assert new != old and not old.exists()
    assert builds == [TinyRecipe().key(), demo.RECIPE.key()]


def test_recipe_keys_follow_every_setting():
    assert TinyRecipe().key() == TinyRecipe().key()
    assert TinyRecipe(seed=1).key() != TinyRecipe().key()
    assert TinyRecipe(model_flags=("--hidden-size", "96")).key() != TinyRecipe().key()


def test_the_command_prints_the_model_directory_last(builds, tmp_path, capsys):
    demo.main(["--cache-dir", str(tmp_path / "cache")])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(tmp_path / "cache" / f"{demo.ENTRY_PREFIX}{pipeline_cache.entry_key(demo.RECIPE)}")
