"""`webui DIR` on a released-layout checkpoint it cannot load: one line naming the field and the fix, exit 2."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from upstream_release import edited_release, wrong_shape_projector


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_tower_key", r"config.json has no mm_vision_tower: set it to the hub id or local path"),
        ("missing_tower", r"field mm_vision_tower is '.*no-such-clip', which could not be read: there is no such dir"),
        ("wrong_projector", r"model\.mm_projector\.weight has shape \[\d+, 32\] but config.json \(mm_hidden_size 64"),
    ],
)
def test_unloadable_release_is_one_line_and_exit_2(release_dir, tmp_path, case, message):
    model = {
        "no_tower_key": lambda: edited_release(release_dir, tmp_path, mm_vision_tower=None),
        "missing_tower": lambda: edited_release(release_dir, tmp_path, mm_vision_tower=str(tmp_path / "no-such-clip")),
        "wrong_projector": lambda: wrong_shape_projector(release_dir, tmp_path),
    }[case]()
    done = subprocess.run(
        [sys.executable, "-m", "webui", str(model), "--server_port", "1"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("webui: error: ")]
    assert len(errors) == 1
    assert re.search(message, errors[0]), errors[0]
