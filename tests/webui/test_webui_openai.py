"""The web UI over an OpenAI-compatible server: requests it sends, streaming, Stop, retry, images, the CLI flag.

A small fake server stands in for ``vllm serve`` here (tests/serving drives the
real one): it records every request and streams a scripted answer.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from webui.app import Limits, build_app
from webui.backend import GenerationParams
from webui.openai_backend import OpenAIBackend, ServerError, openai_messages
from webui.server import serve


class FakeOpenAI:
    """``/v1/models`` and streamed ``/v1/chat/completions`` on 127.0.0.1, recording requests.

    The answer is ``words`` pieces ``"w0 "``, ``"w1 "``... sent ``delay`` seconds
    apart; ``disconnected`` is set when a client hangs up mid-stream.
    """

    def __init__(self, *, words: int = 5, delay: float = 0.0, api_key: str | None = None):
        self.words, self.delay, self.api_key = words, delay, api_key
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.disconnected = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def refuse_without_key(self) -> bool:
                self.headers_seen = dict(self.headers)
                fake.headers.append(dict(self.headers))
                if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self.reply(401, {"error": {"message": "bad key"}})
                    return True
                return False

            def reply(self, status, payload):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.refuse_without_key():
                    return
                self.reply(200, {"object": "list", "data": [{"id": "tiny-yuren", "max_model_len": 512}]})

            def do_POST(self):
                if self.refuse_without_key():
                    return
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(request)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for i in range(fake.words):
                        chunk = {"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(fake.delay)
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    fake.disconnected.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_openai():
    servers = []

    def make(**settings):
        servers.append(FakeOpenAI(**settings))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def decode_data_url(url: str) -> Image.Image:
    header, payload = url.split(",", 1)
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_messages_carry_each_image_where_the_ui_placed_it():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nfirst?"}]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n"}, {"type": "image"}]},
    ]
    converted = openai_messages(messages, ["data:a", "data:b", "data:c"])
    assert converted == [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:a"}}, {"type": "text", "text": "\nfirst?"}],
        },
        {"role": "assistant", "content": "a cat"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:b"}},
                {"type": "text", "text": "\n"},
                {"type": "image_url", "image_url": {"url": "data:c"}},
            ],
        },
    ]
    with pytest.raises(ValueError, match="more images were given"):
        openai_messages(messages, ["data:a", "data:b", "data:c", "data:d"])
    with pytest.raises(ValueError, match="more images than were given"):
        openai_messages(messages, ["data:a"])


def test_backend_streams_sends_settings_and_key(fake_openai):
    server = fake_openai(words=4, api_key="k3y")
    backend = OpenAIBackend(server.url, api_key="k3y")
    assert backend.model == "tiny-yuren" and backend.context_length == 512  # from /v1/models
    image = Image.new("RGB", (5, 3), (200, 10, 30))
    url = backend.prepare_image(image)
    assert decode_data_url(url).tobytes() == image.tobytes()  # lossless

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nwhat?"}]}]
    params = GenerationParams(max_new_tokens=7, temperature=0, repetition_penalty=1.2)
    pieces = list(backend.stream(messages, [url], params, threading.Event()))
    assert pieces == ["w0 ", "w1 ", "w2 ", "w3 "]
    request = server.requests[-1]
    assert request["model"] == "tiny-yuren" and request["stream"] is True
    assert request["max_tokens"] == 7 and request["temperature"] == 0 and request["repetition_penalty"] == 1.2
    assert "top_p" not in request  # greedy
    assert request["messages"][0]["content"][0] == {"type": "image_url", "image_url": {"url": url}}
    assert all(h.get("Authorization") == "Bearer k3y" for h in server.headers)

    sampled = GenerationParams(max_new_tokens=3, temperature=0.5, top_p=0.8)
    list(backend.stream(messages, [url], sampled, threading.Event()))
    assert server.requests[-1]["top_p"] == 0.8 and server.requests[-1]["temperature"] == 0.5

    with pytest.raises(ServerError, match="401.*bad key"):
        OpenAIBackend(server.url, api_key="wrong")


def test_stop_closes_the_stream(fake_openai):
    server = fake_openai(words=500, delay=0.01)
    backend = OpenAIBackend(server.url)
    stop = threading.Event()
    received = []
    messages = [{"role": "user", "content": [{"type": "text", "text": "go"}]}]
    for piece in backend.stream(messages, [], GenerationParams(max_new_tokens=500), stop):
        received.append(piece)
        if len(received) == 3:
            stop.set()
    assert received == ["w0 ", "w1 ", "w2 "]
    assert server.disconnected.wait(timeout=10)  # the server saw the client go: vLLM aborts the request then


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_ui_over_the_server_answers_through_gradio_client(fake_openai, tmp_path):
    server = fake_openai(words=3)
    backend = OpenAIBackend(server.url)
    app = build_app(backend, lang="en", limits=Limits(), defaults=GenerationParams(temperature=0, max_new_tokens=16))
    _, url, _ = serve(app, server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        picture = tmp_path / "blue.png"
        Image.new("RGB", (8, 8), (0, 0, 255)).save(picture)
        client = Client(url, verbose=False)
        history, _ = client.predict({"text": "what is this?", "files": [handle_file(str(picture))]}, api_name="/chat")
        assert history[-1]["content"][0]["text"] == "w0 w1 w2 "
        first = server.requests[-1]["messages"]
        assert first[-1]["content"][0]["type"] == "image_url"
        assert decode_data_url(first[-1]["content"][0]["image_url"]["url"]).getpixel((0, 0)) == (0, 0, 255)
        assert first[-1]["content"][1] == {"type": "text", "text": "what is this?"}

        client.predict({"text": "and now?", "files": []}, api_name="/chat")
        second = server.requests[-1]["messages"]
        # History goes along: the earlier turn with its image, the earlier answer, the new question.
        assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
        assert second[:2] == first and second[2] == {"role": "assistant", "content": "w0 w1 w2 "}

        client.predict(api_name="/retry")
        assert server.requests[-1]["messages"] == second
    finally:
        app.close()


def test_cli_refuses_a_key_file_without_api_base(tmp_path, capsys):
    from webui.__main__ import main

    key = tmp_path / "key"
    key.write_text("k3y\n")
    with pytest.raises(SystemExit):
        main(["--api_key_file", str(key)])
    assert "--api_key_file needs --api_base" in capsys.readouterr().err


def test_cli_reports_an_unreachable_server(capsys):
    from webui.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--api_base", f"http://127.0.0.1:{free_port()}/v1"])
    assert exit_info.value.code == 2
    assert "cannot reach the server" in capsys.readouterr().err
