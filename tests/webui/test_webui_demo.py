"""The web UI gets its demo model from the tools' ``make-demo-model`` command, or says what to run without it."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from webui import demo

PYTHON = sys.executable


def write_command(folder: Path, body: str) -> Path:
    """An executable ``make-demo-model`` stand-in in ``folder`` running the Python ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / demo.COMMAND
    script.write_text(f"#!{PYTHON}\nimport sys\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def only_path(monkeypatch, tmp_path):
    """Look for the command only in ``tmp_path/bin`` (not beside this Python, where the real one is installed)."""
    monkeypatch.setattr(demo.sys, "executable", str(tmp_path / "no-env" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return tmp_path / "bin"


def test_the_demo_model_is_the_directory_the_command_prints_last(only_path, tmp_path):
    write_command(only_path, "print('building...')\nprint(sys.argv[sys.argv.index('--cache-dir') + 1] + '/model-x')")
    assert demo.ensure_demo_model(tmp_path / "cache") == tmp_path / "cache" / "model-x"


def test_a_failed_build_says_so(only_path, tmp_path):
    write_command(only_path, "sys.exit(3)")
    with pytest.raises(demo.DemoUnavailable, match="exit status 3"):
        demo.ensure_demo_model(tmp_path / "cache")


def test_without_the_tools_it_says_what_to_run(only_path, tmp_path):
    with pytest.raises(demo.DemoUnavailable, match="uv run webui.*--model") as error:
        demo.ensure_demo_model(tmp_path / "cache")
    assert "make-demo-model tool" in str(error.value)


def test_the_workspace_installs_the_command_beside_python(monkeypatch):
    # Found with an empty PATH too: a server started by the venv's python, not from an activated shell.
    monkeypatch.setenv("PATH", "")
    found = demo.find_command()
    assert found is not None and Path(found).parent == Path(PYTHON).parent
    assert os.access(found, os.X_OK)
