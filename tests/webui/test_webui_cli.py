"""`webui` command line: booleans that mean what they say, the exposure guard, demo and model wiring."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import webui.__main__ as cli
from webui.app import build_app
from webui.auth import AUTH_ENV, ExposureRefused, check_exposure, is_loopback, parse_auth
from webui.server import serve


@pytest.mark.parametrize(
    "text, value", [("True", True), ("False", False), ("false", False), ("1", True), ("no", False)]
)
def test_booleans_parse_as_written(text, value):
    args = cli.build_parser().parse_args(["some/model", "--load_8bit", text, "--share", text])
    assert args.load_8bit is value and args.share is value


def test_bad_boolean_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["--load_8bit", "maybe"])
    assert exited.value.code == 2
    assert "expected True or False" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--auth", "nopassword"], "expected USER:PASS"),
        (["--auth", ":long-enough-pw"], "expected USER:PASS"),
        (["--auth", "alice:short"], "has 5 characters; use at least 10"),
    ],
)
def test_bad_credentials_are_refused_before_loading_anything(monkeypatch, capsys, argv, message):
    monkeypatch.delenv(AUTH_ENV, raising=False)

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded despite unusable credentials")

    monkeypatch.setattr("webui.engine.ModelBackend.from_pretrained", must_not_load)
    with pytest.raises(SystemExit) as exited:
        cli.main(["model", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_are_private():
    args = cli.build_parser().parse_args([])
    assert args.model is None and args.server_name == "127.0.0.1" and args.share is False and args.auth is None
    assert args.lang == "zh" and not args.allow_unauthenticated_public


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                            ("::", False), ("myhost.example", False)])  # fmt: skip
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_auth_pairs():
    assert parse_auth("alice:pa:ss-and-more") == ("alice", "pa:ss-and-more")
    with pytest.raises(ValueError, match="USER:PASS"):
        parse_auth("alice:")
    with pytest.raises(ValueError, match="at least 10"):
        parse_auth("alice:123456789")


def test_public_without_auth_is_refused_unless_insisted():
    with pytest.raises(ExposureRefused, match="--auth"):
        check_exposure("0.0.0.0", share=False, auth=None)
    with pytest.raises(ExposureRefused, match="gradio.live"):
        check_exposure("127.0.0.1", share=True, auth=None)
    check_exposure("0.0.0.0", share=True, auth=("a", "b" * 10))
    check_exposure("0.0.0.0", share=False, auth=None, allow_unauthenticated_public=True)
    check_exposure("127.0.0.1", share=False, auth=None)


def test_serve_refuses_before_listening(fake_backend):
    app = build_app(fake_backend())
    with pytest.raises(ExposureRefused):
        serve(app, server_name="0.0.0.0", prevent_thread_lock=True, quiet=True)
    assert not app.is_running


def test_cli_refuses_public_without_auth_before_loading_anything(monkeypatch, capsys):
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the exposure check")

    monkeypatch.setattr("webui.engine.ModelBackend.from_pretrained", must_not_load)
    for argv in (["model", "--server_name", "0.0.0.0"], ["model", "--share", "True"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == 2
    assert "--auth-file FILE" in capsys.readouterr().err


@pytest.fixture
def launched(monkeypatch, fake_backend):
    """Run ``cli.main`` with model loading and serving replaced; return what they were given."""
    seen = {}
    monkeypatch.delenv(AUTH_ENV, raising=False)

    def load(path, **kwargs):
        seen["load"] = (str(path), kwargs)
        return fake_backend()

    def fake_serve(app, **kwargs):
        seen["app"], seen["serve"] = app, kwargs

    monkeypatch.setattr("webui.engine.ModelBackend.from_pretrained", load)
    monkeypatch.setattr("webui.server.serve", fake_serve)
    return seen


def test_cli_serves_the_named_model(launched, tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # the loader is faked; the command checks only that the file is there
    cli.main([str(model), "--load_8bit", "False", "--load_4bit", "True", "--server_name", "0.0.0.0",
              "--auth", "alice:secret-enough", "--lang", "en", "--compile", "True", "--threads", "3"])  # fmt: skip
    expected = {"load_8bit": False, "load_4bit": True, "compile": True, "threads": 3}
    assert launched["load"] == (str(model), expected)
    settings = launched["serve"]
    assert settings["server_name"] == "0.0.0.0" and settings["auth"] == ("alice", "secret-enough")
    assert settings["blocked_paths"] == [model]  # the model directory is never served
    config = json.dumps(launched["app"].config, ensure_ascii=False, default=str)
    assert "my-model" in config and str(tmp_path) not in config and "demo model" not in config


def test_cli_without_model_serves_the_demo_and_says_so(launched, monkeypatch, tmp_path):
    built = tmp_path / "cache" / "model"

    def ensure_demo_model(cache_dir):
        assert cache_dir == tmp_path / "cache"
        return built

    monkeypatch.setattr("webui.demo.ensure_demo_model", ensure_demo_model)
    cli.main(["--demo_cache_dir", str(tmp_path / "cache")])
    assert launched["load"][0] == str(built)
    config = json.dumps(launched["app"].config, ensure_ascii=False, default=str)
    assert "这是内置的小型演示模型" in config


def test_a_model_that_is_not_there_is_a_message_not_a_traceback(tmp_path, capsys):
    missing = tmp_path / "missing-dir"
    for model, expected in (
        (str(missing), f"webui: error: {missing}: no such directory; pass a YuRen checkpoint directory"),
        (str(tmp_path), f"webui: error: {tmp_path}: the directory holds no config.json; pass a YuRen checkpoint"),
    ):
        with pytest.raises(SystemExit) as exited:
            cli.main([model])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert expected in err
        assert "Traceback" not in err and "Repo id" not in err


def test_8bit_and_4bit_together_are_refused_before_loading(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["/nowhere", "--load_8bit", "True", "--load_4bit", "True"])
    assert exited.value.code == 2
    assert "webui: error: choose one of --load_8bit True and --load_4bit True, not both" in capsys.readouterr().err


# Runs the command in a fresh process with the engine replaced: it reports OpenMP's spin setting and whether torch
# was already loaded (OpenMP reads the setting then) when the command turned to loading the model.
SPIN_PROBE = """
import os, sys, types
import webui.__main__ as cli

class ModelBackend:
    @classmethod
    def from_pretrained(cls, path, **kwargs):
        print(os.environ.get("GOMP_SPINCOUNT", "unset"), "torch" in sys.modules)
        raise SystemExit(0)

engine = types.ModuleType("webui.engine")
engine.ModelBackend = ModelBackend
sys.modules["webui.engine"] = engine
cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    "chosen, expected",
    [({}, "1000"), ({"GOMP_SPINCOUNT": "7"}, "7"), ({"OMP_WAIT_POLICY": "active"}, "unset")],
)
def test_the_command_starts_openmp_with_a_short_spin_unless_the_user_chose(tmp_path, chosen, expected):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    unset = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", AUTH_ENV)
    env = {name: value for name, value in os.environ.items() if name not in unset} | chosen
    done = subprocess.run(
        [sys.executable, "-c", SPIN_PROBE, str(model)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [expected, "False"]


def test_cli_passes_proxies_hosts_and_server_limits(launched, tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cli.main([str(model), "--trusted_proxy", "10.0.0.0/8", "--trusted_proxy", "::1", "--allowed_host", "chat.example.org",
              "--max_sessions", "50", "--upload_rate", "50mb", "--upload_storage", "1gb"])  # fmt: skip
    settings = launched["serve"]
    assert settings["trusted_proxies"] == ["10.0.0.0/8", "::1"] and settings["allowed_hosts"] == ["chat.example.org"]
    limits = settings["limits"]
    assert (limits.max_sessions, limits.upload_rate, limits.upload_storage) == (50, "50mb", "1gb")
    for flags in (["--trusted_proxy", "proxy.example.org"], ["--upload_rate", "50"], ["--upload_storage", "lots"]):
        with pytest.raises(SystemExit) as exited:
            cli.main([str(model), *flags])
        assert exited.value.code == 2
        assert f"argument {flags[0]}" in capsys.readouterr().err
