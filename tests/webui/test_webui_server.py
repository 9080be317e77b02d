"""Launched servers on 127.0.0.1: file routes, upload limits, the queue, auth and the gradio_client API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, AuthenticationError
from repo_helpers import free_port
from webui_helpers import answer_of, gated_server, served, user_texts, wait_for

from webui.app import Limits, build_app
from webui.backend import GenerationParams
from webui.engine import ModelBackend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_server(fused_model_dir):
    backend = ModelBackend.from_pretrained(fused_model_dir)
    app = build_app(
        backend,
        lang="en",
        limits=Limits(max_file_size="1mb"),
        defaults=GenerationParams(temperature=0, max_new_tokens=32),
    )
    with served(app, limits=Limits(max_file_size="1mb"), blocked_paths=[fused_model_dir]) as url:
        yield url


def test_file_routes_serve_uploads_and_nothing_else(model_server, fused_model_dir, tmp_path, images):
    with open(images["png"], "rb") as f:
        uploaded = httpx.post(f"{model_server}gradio_api/upload", files={"files": ("red.png", f, "image/png")})
    assert uploaded.status_code == 200
    own = httpx.get(f"{model_server}gradio_api/file={uploaded.json()[0]}")
    assert own.status_code == 200 and own.content == images["png"].read_bytes()  # the route does work

    elsewhere = tmp_path / "private.txt"
    elsewhere.write_text("secret")
    forbidden = [
        fused_model_dir / "config.json",
        fused_model_dir / "model.safetensors",
        fused_model_dir / "tokenizer_config.json",
        elsewhere,
        "/etc/passwd",
        os.path.join(os.getcwd(), "pyproject.toml"),
        "/tmp/gradio/../../etc/passwd",
        "/tmp/gradio/%2e%2e/%2e%2e/etc/passwd",
        f"/tmp/gradio/%2e%2e{fused_model_dir}/config.json",
    ]
    for path in forbidden:
        for route in ("gradio_api/file=", "gradio_api/file/"):
            response = httpx.get(f"{model_server}{route}{path}")
            assert response.status_code in (403, 404), (route, path, response.status_code)
            assert b"secret" not in response.content and b"root:" not in response.content


def test_uploads_over_the_size_limit_are_refused(model_server):
    big = b"\x89PNG" + os.urandom(1_500_000)
    response = httpx.post(f"{model_server}gradio_api/upload", files={"files": ("big.png", big, "image/png")})
    assert response.status_code == 413


def test_direct_posts_cannot_skip_the_queue(model_server):
    for route in ("gradio_api/run/chat", "gradio_api/api/chat"):
        response = httpx.post(f"{model_server}{route}", json={"data": [{"text": "hi", "files": []}]})
        assert response.status_code == 404, route


def test_api_chat_with_images_and_per_client_history(model_server, images):
    alice = Client(model_server, verbose=False)
    history, box = alice.predict(
        {"text": "what is this?", "files": [handle_file(str(images["png"]))]}, api_name="/chat"
    )
    assert box == {"text": "", "files": []}
    assert [m["content"][0]["type"] for m in history] == ["file", "text", "text"]
    history, _ = alice.predict({"text": "and again?", "files": []}, max_new_tokens=4, api_name="/chat")
    assert user_texts(history) == ["what is this?", "and again?"] and answer_of(history)

    bob = Client(model_server, verbose=False)
    bob_history, _ = bob.predict({"text": "hello", "files": []}, api_name="/chat")
    assert user_texts(bob_history) == ["hello"]
    retried = bob.predict(api_name="/retry")
    assert user_texts(retried) == ["hello"] and answer_of(retried) == answer_of(bob_history)  # greedy
    assert bob.predict(api_name="/delete_last") == []
    assert user_texts(alice.predict(api_name="/delete_last")) == ["what is this?"]


@pytest.mark.parametrize("kind, message", [("bomb_png", "too large"), ("truncated_jpeg", "Could not read")])
def test_bad_images_get_a_clean_error_and_the_server_stays_up(model_server, images, kind, message):
    client = Client(model_server, verbose=False)
    with pytest.raises(AppError, match=message):
        client.predict({"text": "look", "files": [handle_file(str(images[kind]))]}, api_name="/chat")
    history, _ = client.predict({"text": "still there?", "files": []}, max_new_tokens=4, api_name="/chat")
    assert user_texts(history) == ["still there?"]


def test_full_queue_answers_busy_and_recovers(fake_backend):
    with gated_server(fake_backend, Limits(queue_size=1)) as (backend, gate, url):
        clients = [Client(url, verbose=False) for _ in range(3)]
        running = clients[0].submit({"text": "first", "files": []}, api_name="/chat")
        wait_for(lambda: backend.calls)
        assert len(backend.calls) == 1  # the model is busy with the first request
        waiting = clients[1].submit({"text": "second", "files": []}, api_name="/chat")
        time.sleep(0.5)
        refused = clients[2].submit({"text": "third", "files": []}, api_name="/chat")
        with pytest.raises(Exception, match="(?i)queue is full"):
            refused.result(timeout=20)
        gate.set()
        assert user_texts(running.result(timeout=20)[0]) == ["first"]
        assert user_texts(waiting.result(timeout=20)[0]) == ["second"]
        history, _ = clients[2].predict({"text": "third again", "files": []}, api_name="/chat")
        assert answer_of(history).startswith("echo#3: third again")


def test_api_stop_ends_only_the_callers_answer(fake_backend):
    backend = fake_backend(words=300, delay=0.01)
    app = build_app(backend, lang="en")
    with served(app) as url:
        alice, bob = Client(url, verbose=False), Client(url, verbose=False)
        alice_job = alice.submit({"text": "alice", "files": []}, api_name="/chat")
        wait_for(lambda: backend.calls and backend.calls[0]["pieces"] >= 5)
        bob_job = bob.submit({"text": "bob", "files": []}, api_name="/chat")  # waits: one generation at a time
        alice.predict(api_name="/stop")
        alice_answer = answer_of(alice_job.result(timeout=20)[0])
        bob_answer = answer_of(bob_job.result(timeout=30)[0])
        assert backend.calls[0]["stopped"] and alice_answer.startswith("echo#1: alice") and len(alice_answer) < 600
        assert not backend.calls[1]["stopped"] and bob_answer.endswith("word " * 5)
        assert backend.calls[1]["pieces"] == 303


def test_out_of_memory_answers_an_error_then_works(fake_backend):
    import torch

    backend = fake_backend(fail=[torch.OutOfMemoryError("CUDA out of memory"), None])
    app = build_app(backend, lang="en")
    with served(app) as url:
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="Out of memory"):
            client.predict({"text": "first", "files": []}, api_name="/chat")
        history, _ = client.predict({"text": "second", "files": []}, api_name="/chat")
        assert answer_of(history).startswith("echo#2: second")


def test_auth_is_required_when_set(fake_backend):
    app = build_app(fake_backend(), lang="en")
    with served(app, auth=("alice", "s3cret-but-longer")) as url:
        assert httpx.get(f"{url}config").status_code == 401
        assert httpx.post(f"{url}login", data={"username": "alice", "password": "wrong"}).status_code in (400, 401)
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            Client(url, verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("alice", "wrong"), verbose=False)
        client = Client(url, auth=("alice", "s3cret-but-longer"), verbose=False)
        history, _ = client.predict({"text": "hi", "files": []}, api_name="/chat")
        assert answer_of(history).startswith("echo#1: hi")


def test_cli_serves_a_model_on_loopback(fused_model_dir):
    port = free_port()
    command = [sys.executable, "-m", "webui", str(fused_model_dir), "--server_port", str(port), "--lang", "en"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        config = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert config is not None and config.status_code == 200, server.stdout.read() if server.poll() else ""
        assert f"`{fused_model_dir.name}`" in config.text and str(fused_model_dir) not in config.text
        assert "demo model" not in config.text
        # Listening on 127.0.0.1 only: not on the machine's other addresses, nor on the rest of 127/8, which
        # Linux answers on for any server bound to all addresses (so the check runs even on a host with no network).
        hosted = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
        others = (hosted | {"127.0.0.2"}) - {"127.0.0.1"}
        for address in others:
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://{address}:{port}/config", timeout=2)
    finally:
        server.terminate()
        server.wait(timeout=30)
