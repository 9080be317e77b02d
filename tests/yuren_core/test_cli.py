"""How a command ends on an error the user can act on: its message on stderr, status 2, nothing else caught."""

from __future__ import annotations

import pytest

from yuren_core.cli import exit_on


def test_a_listed_error_ends_the_command_with_its_message_and_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info, exit_on("some-tool", FileExistsError, ValueError):
        raise ValueError("--output out exists and is not empty; pass --overwrite to replace it")
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "some-tool: error: --output out exists and is not empty; pass --overwrite to replace it\n"
    assert captured.out == ""


def test_other_errors_pass_through_as_the_bugs_they_are():
    with pytest.raises(RuntimeError, match="internal"), exit_on("some-tool", ValueError):
        raise RuntimeError("internal")
