"""The built-in demo model, got from the ``make-demo-model`` command (the make-demo-model tool).

The web UI does not train: building the demo model (the tiny YuRen model
trained through stages 1-3, cached after the first build) is the tool's job.
Where the tool is installed (a checkout of the YuRen workspace, where
``uv run webui`` installs it), the UI runs the command and serves what it
built; elsewhere it says what to run instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger("webui")

COMMAND = "make-demo-model"


class DemoUnavailable(RuntimeError):
    """The demo model cannot be built here; the message says what to run instead."""


def find_command() -> str | None:
    """The ``make-demo-model`` executable: beside this Python (its environment's scripts), else on ``PATH``."""
    here = Path(sys.executable).parent
    return shutil.which(COMMAND, path=os.pathsep.join([str(here), os.environ.get("PATH", "")]))


def ensure_demo_model(cache_dir: Path) -> Path:
    """Return the demo checkpoint under ``cache_dir``, building it on first use (a minute or two on a CPU)."""
    command = find_command()
    if command is None:
        raise DemoUnavailable(
            f"no --model given, and the demo model's builder ({COMMAND}, from the make-demo-model tool) is not "
            "installed here. In a checkout of the YuRen repository run `uv run webui`, which installs the tools "
            f"and builds the demo model on first use (or build it yourself: `uv run {COMMAND} --cache-dir DIR`); "
            "otherwise pass --model with a YuRen checkpoint."
        )
    logger.info("getting the demo model from `%s --cache-dir %s`", COMMAND, cache_dir)
    # The command's progress bar and log go to our stderr; its last line of output is the model's directory.
    result = subprocess.run([command, "--cache-dir", str(cache_dir)], stdout=subprocess.PIPE, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise DemoUnavailable(
            f"`{command} --cache-dir {cache_dir}` failed (exit status {result.returncode}); its messages are above, "
            f"and the build's own output is in the log it keeps in {cache_dir}"
        )
    return Path(lines[-1])
