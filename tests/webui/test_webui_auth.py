"""Credentials (file, environment, argv with a warning), the login backoff, and a refusal that is immediate."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import webui.__main__ as cli
from webui.auth import (
    AUTH_ENV,
    CredentialsError,
    LoginThrottle,
    client_key,
    password_checker,
    resolve_credentials,
)


@pytest.fixture
def launched(monkeypatch, fake_backend):
    seen = {}
    monkeypatch.delenv(AUTH_ENV, raising=False)
    monkeypatch.setattr("webui.engine.ModelBackend.from_pretrained", lambda path, **kwargs: fake_backend())
    monkeypatch.setattr("webui.server.serve", lambda app, **kwargs: seen.update(kwargs))
    return seen


def test_credentials_come_from_exactly_one_place(tmp_path):
    secret = tmp_path / "auth"
    secret.write_text("# who may log in\n\nalice:correct horse battery\n")
    assert resolve_credentials(argv_auth=None, auth_file=secret, environ={}) == ("alice", "correct horse battery")
    env = {AUTH_ENV: "bob:from-the-environment"}
    assert resolve_credentials(argv_auth=None, auth_file=None, environ=env) == ("bob", "from-the-environment")
    assert resolve_credentials(argv_auth="carol:on-the-command-line", auth_file=None, environ={}) == (
        "carol",
        "on-the-command-line",
    )
    assert resolve_credentials(argv_auth=None, auth_file=None, environ={}) is None
    with pytest.raises(CredentialsError, match="more than once"):
        resolve_credentials(argv_auth="carol:on-the-command-line", auth_file=secret, environ={})
    with pytest.raises(CredentialsError, match=f"{AUTH_ENV}: the password has 3 characters"):
        resolve_credentials(argv_auth=None, auth_file=None, environ={AUTH_ENV: "bob:abc"})
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(CredentialsError, match="no USER:PASS line"):
        resolve_credentials(argv_auth=None, auth_file=empty, environ={})
    with pytest.raises(CredentialsError, match="cannot read"):
        resolve_credentials(argv_auth=None, auth_file=tmp_path / "missing", environ={})


def test_cli_reads_the_auth_file_and_warns_about_argv_and_open_files(launched, tmp_path, capsys):
    secret = tmp_path / "auth"
    secret.write_text("alice:correct horse battery\n")
    secret.chmod(0o600)
    cli.main(["model", "--server_name", "0.0.0.0", "--auth-file", str(secret)])
    assert launched["auth"] == ("alice", "correct horse battery")
    assert "warning" not in capsys.readouterr().err

    secret.chmod(0o644)
    cli.main(["model", "--server_name", "0.0.0.0", "--auth-file", str(secret)])
    assert "can be read by other users" in capsys.readouterr().err

    cli.main(["model", "--server_name", "0.0.0.0", "--auth", "alice:correct horse battery"])
    assert launched["auth"] == ("alice", "correct horse battery")
    assert "every user of this machine can read it (ps)" in capsys.readouterr().err


def test_cli_reads_credentials_from_the_environment(launched, monkeypatch, capsys):
    monkeypatch.setenv(AUTH_ENV, "alice:correct horse battery")
    cli.main(["model", "--share", "True"])
    assert launched["auth"] == ("alice", "correct horse battery") and launched["share"] is True
    assert "warning" not in capsys.readouterr().err


def test_password_check_is_exact():
    check = password_checker("alice", "correct horse battery")
    assert check("alice", "correct horse battery")
    assert not check("alice", "correct horse batter")
    assert not check("alic", "ecorrect horse battery")  # the separator keeps user and password apart
    assert not check("alice", "\ud800")  # unencodable input is a failed login, not a crash


def test_login_backoff_doubles_per_client_and_resets_on_success():
    now = [0.0]
    throttle = LoginThrottle(free_failures=2, base_delay=1.0, max_delay=8.0, clock=lambda: now[0])
    waits = []
    for _ in range(7):
        wait = throttle.wait_for("10.0.0.1")
        waits.append(wait)
        if wait:
            now[0] += wait
            assert throttle.wait_for("10.0.0.1") == 0
        throttle.finished("10.0.0.1", success=False)
    # Two free failures, then 1, 2, 4 and 8 s (capped) before each next attempt.
    assert waits == [0, 0, 0, 1.0, 2.0, 4.0, 8.0]
    assert throttle.wait_for("10.0.0.2") == 0  # another client is not held back
    throttle.finished("10.0.0.2", success=True)
    now[0] += 8.0
    assert throttle.wait_for("10.0.0.1") == 0
    throttle.finished("10.0.0.1", success=True)
    assert throttle.wait_for("10.0.0.1") == 0  # a success clears the record


def test_one_login_in_flight_per_client():
    throttle = LoginThrottle(clock=lambda: 0.0)
    assert throttle.wait_for("10.0.0.1") == 0
    assert throttle.wait_for("10.0.0.1") > 0  # a parallel guess must wait for the first answer
    throttle.finished("10.0.0.1", success=False)
    assert throttle.wait_for("10.0.0.1") == 0


def test_throttle_keeps_a_bounded_number_of_clients():
    throttle = LoginThrottle(max_clients=3, free_failures=0, clock=lambda: 0.0)
    for i in range(10):
        throttle.wait_for(f"10.0.0.{i}")
        throttle.finished(f"10.0.0.{i}", success=False)
    assert len(throttle._records) == 3


def test_an_ipv6_host_is_counted_by_its_64_block():
    assert client_key("2001:db8:1:2::5") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_key("::ffff:10.0.0.7") == "10.0.0.7"
    assert client_key(None) == "unknown"


def test_refusing_to_expose_is_immediate():
    """The exposure check runs before torch, Gradio or the model: the refusal takes well under a second."""
    probe = (
        "import sys, time; start = time.perf_counter()\n"
        "import webui.__main__ as cli\n"
        "try:\n    cli.main(['some/model', '--server_name', '0.0.0.0'])\n"
        "except SystemExit as exited:\n    code = exited.code\n"
        "heavy = sorted(m for m in ('torch', 'gradio', 'transformers', 'PIL') if m in sys.modules)\n"
        "print(code, heavy, round(time.perf_counter() - start, 3))\n"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.stdout.startswith("2 []"), (result.stdout, result.stderr)  # exit 2, nothing heavy imported
    assert "--auth-file FILE" in result.stderr
    assert float(result.stdout.split()[-1]) < 1.0  # import to refusal, in the process
    assert elapsed < 3.0  # with the interpreter's start, on a loaded machine


def test_credentials_are_read_from_the_environment_as_it_is_when_asked(monkeypatch):
    # datasets' map(num_proc=...) replaces os.environ with a copy; the credentials must come from the current one.
    import os

    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setenv(AUTH_ENV, "alice:correct horse battery")
    assert resolve_credentials(argv_auth=None, auth_file=None) == ("alice", "correct horse battery")
