"""Shared fixtures: the tiny offline models every test builds on, made once per session."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from repo_helpers import PROJECT_DATA, UPSTREAM_SAMPLE, load_sharegpt


@pytest.fixture(scope="session")
def project_conversations() -> list[dict]:
    return load_sharegpt(PROJECT_DATA)


@pytest.fixture(scope="session")
def upstream_conversations() -> list[dict]:
    if not UPSTREAM_SAMPLE.is_file():
        pytest.skip(f"upstream sample not present at {UPSTREAM_SAMPLE}")
    return load_sharegpt(UPSTREAM_SAMPLE)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """``make-tiny-model`` output: ``base/`` (tiny LLaMA) and ``clip/`` (tiny open_clip ViT)."""
    from make_tiny_model.tiny_model import main

    out = tmp_path_factory.mktemp("tiny")
    main(["--output", str(out)])
    return out


@pytest.fixture(scope="session")
def prepared_base(tiny_dir, tmp_path_factory) -> Path:
    """The tiny base after ``prepare-base-model``: extended vocabulary, LLaMA weights."""
    from prepare_base_model.prepare import prepare

    return prepare(str(tiny_dir / "base"), tmp_path_factory.mktemp("prepared") / "base")


@pytest.fixture(scope="session")
def tokenizer(prepared_base):
    from yuren_core.vocab import load_tokenizer

    return load_tokenizer(str(prepared_base))


@pytest.fixture(scope="session")
def tiny_clip_id(tiny_dir) -> str:
    """open_clip identifier of the tiny vision tower (the tests' stand-in for ``DEFAULT_CLIP_MODEL``)."""
    return f"local-dir:{tiny_dir / 'clip'}"


@pytest.fixture(scope="session")
def fused_model_dir(prepared_base, tiny_clip_id, tmp_path_factory) -> Path:
    """A saved tiny YuRen checkpoint (model + tokenizer): prepared base + tiny vision tower, random projector."""
    import torch

    from yuren_core.loading import build_fused_model

    out = tmp_path_factory.mktemp("fused")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, tokenizer, _ = build_fused_model(prepared_base, tiny_clip_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def uses_pipeline(item: pytest.Item) -> bool:
    return "tiny_pipeline" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Run the tests that need the tiny pipeline last, so the ones that do not run while it trains.

    Their files hold no other tests: xdist (``--dist loadfile``) hands out whole files, in this order.
    """
    items.sort(key=uses_pipeline)


BUILD = pytest.StashKey[subprocess.Popen]()


def pytest_collection_finish(session):
    """Start training the cached tiny pipeline in the background when a selected test needs it.

    Training it takes minutes (more on a busy machine) on one core: the tests that do not need it run meanwhile, and
    the first that does waits for it (:func:`pytest_runtest_protocol`). One process of a run starts it: the only
    one, or xdist's first worker. Later runs, and the demo model, reuse the cache.
    """
    config = session.config
    if config.option.collectonly or not any(uses_pipeline(item) for item in session.items):
        return
    if getattr(config, "workerinput", {}).get("workerid", "gw0") != "gw0":
        return
    from make_demo_model.pipeline import TinyRecipe
    from make_demo_model.pipeline_cache import ENTRIES, default_cache_dir, entry_key

    entries = default_cache_dir() / ENTRIES
    if (entries / entry_key(TinyRecipe())).is_dir():
        return
    # The stages' own output goes to a log beside the cache, not between pytest's lines.
    entries.mkdir(parents=True, exist_ok=True)
    with open(entries / "build.log", "a", encoding="utf-8") as log:
        config.stash[BUILD] = subprocess.Popen(
            [sys.executable, "-m", "make_demo_model.pipeline_cache"], stdout=log, stderr=subprocess.STDOUT
        )


WAITED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Before this process's first test that needs the pipeline, wait while it is built: outside the test's timeout."""
    if uses_pipeline(item) and not item.config.stash.get(WAITED, False):
        from make_demo_model.pipeline import TinyRecipe
        from make_demo_model.pipeline_cache import wait_for_build

        started = time.monotonic()
        build = item.config.stash.get(BUILD, None)
        if build is not None:
            # Started here: its process, not its lock, which it takes only once its imports are done.
            build.wait()
        wait_for_build(TinyRecipe())
        item.config.stash[WAITED] = True
        waited = time.monotonic() - started
        reporter = item.config.pluginmanager.get_plugin("terminalreporter")
        if waited > 1 and reporter is not None:
            reporter.write_line(f"\ntiny pipeline: waited {waited:.0f} s for its build")
    yield


def pytest_sessionfinish(session):
    """Stop a build still running when the session ends early: its unfinished entry is never used."""
    build = session.config.stash.get(BUILD, None)
    if build is not None and build.poll() is None:
        build.terminate()
        build.wait()


def file_states(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def tiny_pipeline():
    """The tiny model trained through stages 1, 2 and 3, from the pipeline cache the demo model shares.

    ``make_demo_model.pipeline_cache`` (``$YUREN_CACHE_DIR``, default ``~/.cache/yuren``). The tests only read it:
    at the session's end every file must be as it was.
    """
    from make_demo_model.pipeline import TinyRecipe
    from make_demo_model.pipeline_cache import cached_tiny_yuren

    recipe = TinyRecipe()
    run = cached_tiny_yuren(recipe)
    before = file_states(run.root)
    yield recipe, run
    if file_states(run.root) != before:
        shutil.rmtree(run.root)  # the next run trains it anew rather than reuse what a test changed
        pytest.fail(f"a test wrote into the cached pipeline {run.root} (now removed); write into tmp_path instead")


@pytest.fixture(scope="session")
def release_clip_dir(tmp_path_factory) -> Path:
    """A tiny transformers ``CLIPModel`` directory: what an upstream checkpoint's ``mm_vision_tower`` names."""
    from upstream_release import build_clip

    return build_clip(tmp_path_factory.mktemp("release-clip"))


@pytest.fixture(scope="session")
def release_dir(tiny_dir, release_clip_dir, tmp_path_factory) -> Path:
    """A tiny checkpoint in upstream's released layout (``multimodal_llama``, ``pytorch_model.bin``, slow tokenizer)."""
    from upstream_release import build_release

    return build_release(tiny_dir / "base", release_clip_dir, tmp_path_factory.mktemp("release") / "model")
