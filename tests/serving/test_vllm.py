"""YuRen in vLLM (the serving/yuren_vllm plugin, on vLLM's CPU build): same greedy answers as transformers."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from webui.app import build_app
from webui.backend import GenerationParams
from webui.openai_backend import OpenAIBackend
from webui.server import serve
from yuren_core.chatml import render
from yuren_core.loading import load_model
from yuren_core.vocab import special_ids

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
MAX_NEW_TOKENS = 12


def write_images(folder: Path) -> list[Path]:
    """Three 32x32 images (the tiny tower's size): two flat colours and a gradient."""
    images = [
        Image.new("RGB", (32, 32), (220, 30, 30)),
        Image.new("RGB", (32, 32), (20, 40, 230)),
        Image.fromarray(
            torch.stack(
                torch.meshgrid(torch.arange(32) * 8, torch.arange(32) * 8, indexing="ij") + (torch.zeros(32, 32),), -1
            )
            .to(torch.uint8)
            .numpy()
        ),
    ]
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"image{i}.png")
        image.save(paths[-1])
    return paths


def conversations(images: list[Path]) -> list[tuple[list[dict], list[Path]]]:
    """Eight conversations: text only, with a system prompt, multi-turn, one and two images."""
    red, blue, gradient = images
    ask = [{"type": "image"}, {"type": "text", "text": "\nWhat is in the picture?"}]
    return [
        ([{"role": "user", "content": "Hello, who are you?"}], []),
        ([{"role": "system", "content": "You are YuRen."}, {"role": "user", "content": "写一首诗"}], []),
        (
            [
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another one?"},
            ],
            [],
        ),
        ([{"role": "user", "content": "1 + 1 = ?"}], []),
        ([{"role": "user", "content": ask}], [red]),
        ([{"role": "user", "content": ask}], [blue]),
        ([{"role": "system", "content": "Describe images."}, {"role": "user", "content": ask}], [gradient]),
        (
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n"}, *ask]}],
            [red, blue],
        ),
    ]


class ImageHost:
    """A plain HTTP server on 127.0.0.1 serving the files of ``folder``, recording each path asked for."""

    def __init__(self, folder: Path):
        self.requested: list[str] = []
        host = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                host.requested.append(self.path)
                super().do_GET()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def image_host(tmp_path):
    """The three test images, served over plain HTTP from 127.0.0.1."""
    folder = tmp_path / "hosted"
    folder.mkdir()
    write_images(folder)
    host = ImageHost(folder)
    yield host
    host.close()


def ask_about(url: str) -> list[dict]:
    """The OpenAI-style question about the image at ``url`` (the fourth conversation, as chat messages)."""
    question = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "\nWhat is in the picture?"}]
    return [{"role": "user", "content": question}]


def test_greedy_answers_match_transformers(vllm_python, vllm_env, vllm_model_dir, image_host, tmp_path):
    model, tokenizer, processor = load_model(vllm_model_dir, dtype=torch.float32)
    ids = special_ids(tokenizer)
    prompts, expected = [], []
    for messages, images in conversations(write_images(tmp_path)):
        rendered = render(tokenizer, messages, image_seq_len=model.config.image_seq_len, add_generation_prompt=True)
        kwargs = {"pixel_values": processor([Image.open(p) for p in images])} if images else {}
        with torch.inference_mode():
            output = model.generate(
                torch.tensor([rendered.input_ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **kwargs
            )
        expected.append(output[0, len(rendered.input_ids) :].tolist())
        prompts.append({"prompt_token_ids": rendered.input_ids, "images": [str(p) for p in images]})
    # The images must steer the answer, or this test could not see an image go missing or land in the wrong place.
    assert len({tuple(answer) for answer in expected[4:7]}) == 3

    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "max_new_tokens": MAX_NEW_TOKENS,
                "stop_token_ids": [ids.im_end, ids.eos],
                "prompts": prompts,
                # The operator named the image host: the red image is fetched over HTTP and answered as if sent inline.
                "allowed_media_domains": ["127.0.0.1"],
                "chats": [ask_about(f"{image_host.url}/image0.png")],
            }
        )
    )
    out = tmp_path / "out.json"
    subprocess.run(
        [str(vllm_python), str(HERE / "vllm_generate.py"), str(vllm_model_dir), str(job), str(out)],
        check=True,
        env=vllm_env,
        timeout=1200,
    )
    generated = json.loads(out.read_text())
    assert generated["prompts"] == expected
    assert generated["chats"] == [expected[4]] and "/image0.png" in image_host.requested


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(vllm_python, vllm_env, vllm_model_dir, tmp_path_factory):
    """``vllm serve`` on the tiny checkpoint at 127.0.0.1; yields its ``/v1`` URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm_serve") / "serve.log"
    command = [
        str(vllm_python.parent / "yuren-vllm"),
        "serve",
        str(vllm_model_dir),
        "--served-model-name",
        "tiny-yuren",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "4",
    ]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=vllm_env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 1200
        while True:
            if server.poll() is not None:
                pytest.fail(f"vllm serve exited with {server.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not come up in time:\n{log.read_text()[-4000:]}")
            time.sleep(2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def expected_answer(vllm_model_dir, tmp_path_factory):
    """transformers' greedy answer to the question about the red image both serving tests ask; and that image."""
    image = write_images(tmp_path_factory.mktemp("served_images"))[0]
    model, tokenizer, processor = load_model(vllm_model_dir, dtype=torch.float32)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nWhat is in the picture?"}]}]
    rendered = render(tokenizer, messages, image_seq_len=model.config.image_seq_len, add_generation_prompt=True)
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([rendered.input_ids]),
            pixel_values=processor([Image.open(image)]),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
        )
    answer = tokenizer.decode(output[0, len(rendered.input_ids) :], skip_special_tokens=True)
    assert answer.strip()
    return image, answer, len(rendered.input_ids)


def test_openai_client_streams_an_answer_about_an_image(vllm_server, vllm_python, expected_answer, tmp_path):
    image, answer, _ = expected_answer
    out = tmp_path / "chat.json"
    subprocess.run(
        [str(vllm_python), str(HERE / "openai_chat.py"), vllm_server, str(image), str(MAX_NEW_TOKENS), str(out)],
        check=True,
        timeout=600,
    )
    result = json.loads(out.read_text())
    assert result["model"] == "tiny-yuren"
    assert len([p for p in result["pieces"] if p]) > 1  # streamed, not sent at once
    # The chat template put the image block where render does: the same greedy answer as transformers.
    assert "".join(result["pieces"]) == result["whole"] == answer


def test_remote_image_urls_are_refused_by_default(vllm_server, image_host):
    request = {"model": "tiny-yuren", "messages": ask_about(f"{image_host.url}/image0.png"), "max_tokens": 4}
    response = httpx.post(f"{vllm_server}/chat/completions", json=request, timeout=120)
    assert response.status_code == 400
    assert "--allowed-media-domains" in response.json()["error"]["message"]
    assert image_host.requested == []  # refused before anything was fetched


def test_web_ui_over_vllm_answers_through_gradio_client(vllm_server, expected_answer):
    image, answer, prompt_tokens = expected_answer
    backend = OpenAIBackend(vllm_server)
    assert backend.model == "tiny-yuren" and backend.context_length == 512
    # vLLM counts the UI's prompts as render does, image block included, so history is fitted to its context.
    assert backend.cannot_count_tokens is None
    question = [{"type": "image"}, {"type": "text", "text": "\nWhat is in the picture?"}]
    url = backend.prepare_image(Image.open(image))
    assert backend.count_tokens([{"role": "user", "content": question}], [url]) == prompt_tokens
    too_long = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " red" * 600}]},
        {"role": "assistant", "content": "A red square."},
        {"role": "user", "content": question},
    ]
    assert backend.unreachable_turns(too_long, [url, url]) == 1
    defaults = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=MAX_NEW_TOKENS)
    app = build_app(backend, lang="en", defaults=defaults)
    _, url, _ = serve(app, server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        history, _ = client.predict(
            {"text": "What is in the picture?", "files": [handle_file(str(image))]},
            system_prompt="",
            api_name="/chat",
        )
        assert history[-1]["content"][0]["text"] == answer
    finally:
        app.close()
