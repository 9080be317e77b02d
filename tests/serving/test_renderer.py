"""YuRenRenderer's two entry points (vLLM's offline ``LLM.chat`` renders through the one, its server through the
other) refuse a request alike, without a model: test_vllm.py drives the server's."""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = pytest.mark.slow

# Run in vLLM's environment. The renderer is made without a model: the refusals come before anything is rendered,
# and the chat parser stands in for one that meets a decompression bomb.
PROBE = """
import asyncio, json
from types import SimpleNamespace

from PIL import Image
from vllm.exceptions import VLLMValidationError

from yuren_vllm import renderer as module


def bomb(*args, **kwargs):
    raise Image.DecompressionBombError("the image claims 225000000 pixels")


async def bomb_async(*args, **kwargs):
    bomb()


module.parse_chat_messages, module.parse_chat_messages_async = bomb, bomb_async
renderer = object.__new__(module.YuRenRenderer)
renderer.model_config = SimpleNamespace(allowed_local_media_path="")


def image(url):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]


def params(chat_template=None):
    return SimpleNamespace(chat_template=chat_template, media_io_kwargs=None, mm_processor_kwargs=None)


requests = {
    "bomb": (image("data:image/png;base64,iVBORw0KGgo="), params()),
    "file": (image("FILE:///etc/passwd"), params()),
    "chat_template": (image("data:image/png;base64,iVBORw0KGgo="), params("{{ messages }}")),
}
answers = {}
for name, (messages, request) in requests.items():
    ways = {
        "sync": lambda: renderer.render_messages(messages, request),
        "async": lambda: asyncio.run(renderer.render_messages_async(messages, request)),
    }
    for way, call in ways.items():
        try:
            call()
            answers[f"{name} {way}"] = "rendered"
        except VLLMValidationError as error:
            answers[f"{name} {way}"] = [error.parameter, error.args[0]]
        except Exception as error:
            answers[f"{name} {way}"] = [type(error).__name__, str(error)]
print(json.dumps(answers))
"""


def test_both_entry_points_refuse_alike(vllm_python):
    result = subprocess.run([str(vllm_python), "-c", PROBE], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    reasons = {
        "bomb": ("messages", "larger than this server decodes (the image claims 225000000 pixels)"),
        "file": ("messages", "--allowed-local-media-path"),
        "chat_template": ("chat_template", "a chat template (--chat-template or the request's chat_template)"),
    }
    for name, (parameter, reason) in reasons.items():
        for way in ("sync", "async"):
            answer = answers[f"{name} {way}"]
            assert answer != "rendered" and answer[0] == parameter and reason in answer[1], (name, way, answer)
