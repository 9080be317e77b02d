"""Benchmark scripts are plain files in ``benchmarks/``, not a package: tests import them from there or run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def benchmarks_on_path(monkeypatch):
    """Make ``import segment_attention`` (and the other scripts' modules) work for the test."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))


@pytest.fixture
def run_benchmark(tmp_path):
    """Run ``benchmarks/<name>.py`` with ``args`` in a fresh interpreter; return its JSON record."""

    def run(name: str, *args: str, timeout: int = 300) -> dict:
        output = tmp_path / f"{name}.json"
        command = [sys.executable, str(BENCHMARKS / f"{name}.py"), *args, "--output", str(output)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        assert result.returncode == 0, f"{name}.py failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        return json.loads(output.read_text(encoding="utf-8"))

    return run
