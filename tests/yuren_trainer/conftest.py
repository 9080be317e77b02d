"""Fixtures for the trainer tests: small conversation files and a QLoRA-ready tiny base."""

from __future__ import annotations

from pathlib import Path

import pytest
from repo_helpers import PROJECT_DATA
from trainer_helpers import MEMORY_CONVERSATIONS, write_json


@pytest.fixture
def memory_file(tmp_path) -> Path:
    return write_json(tmp_path / "memory.json", MEMORY_CONVERSATIONS)


@pytest.fixture(scope="session")
def qlora_base(tmp_path_factory) -> Path:
    """A prepared tiny base whose layer widths are multiples of 32.

    bitsandbytes' CPU 4-bit kernels repack weights for inference in blocks of
    32 output features, so an evaluation pass over a 4-bit layer of any other
    width fails; the real 7B model's widths all qualify.
    """
    from make_tiny_model.llm import build_tiny_base, corpus_lines
    from prepare_base_model.prepare import prepare

    raw = build_tiny_base(tmp_path_factory.mktemp("qlora-raw"), corpus_lines([PROJECT_DATA]), intermediate_size=192)
    return prepare(str(raw), tmp_path_factory.mktemp("qlora") / "base")
