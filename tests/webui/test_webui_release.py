"""The web UI serves a checkpoint in upstream's released layout, as the seed's `webui <model>` command did."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
from gradio_client import Client, handle_file
from repo_helpers import free_port

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("load_8bit", ["False", "True"])
def test_cli_serves_the_release_layout(release_dir, images, load_8bit):
    port = free_port()
    command = [sys.executable, "-m", "webui", str(release_dir), "--load_8bit", load_8bit]
    command += ["--server_port", str(port), "--lang", "en"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300  # loading and gradio start are slow on a busy CPU
        up = False
        while time.monotonic() < deadline and server.poll() is None and not up:
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/config", timeout=2).status_code == 200
            except httpx.TransportError:
                time.sleep(0.5)
        assert up, server.stdout.read() if server.poll() is not None else "the server did not start in time"
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        message = {"text": "这张图片里有什么?", "files": [handle_file(str(images["jpeg"]))]}
        history, _ = client.predict(message, temperature=0, max_new_tokens=8, api_name="/chat")
        assert [m["role"] for m in history] == ["user", "user", "assistant"]
        answer = history[-1]["content"][0]["text"]
        assert answer and "error" not in answer.lower()
    finally:
        server.terminate()
        server.wait(timeout=30)
