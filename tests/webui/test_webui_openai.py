"""The web UI over an OpenAI-compatible server: requests it sends, streaming, Stop, retry, images, the CLI flag.

A small fake server stands in for ``vllm serve`` here (tests/serving drives the
real one): it records every request and streams a scripted answer.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from gradio_client import Client, handle_file
from PIL import Image
from repo_helpers import free_port
from webui_helpers import served

from webui.app import Limits, build_app
from webui.auth import AUTH_ENV
from webui.backend import GenerationParams, PromptTooLong
from webui.openai_backend import NO_API_KEY, OpenAIBackend, ServerError, openai_messages, tokenize_url


def fake_token_count(messages: list[dict]) -> int:
    """The fake server's chat token count: 2 per message, 1 per word, 8 per image, 1 for the generation prompt."""
    count = 1
    for message in messages:
        parts = message["content"] if isinstance(message["content"], list) else [{"text": message["content"]}]
        count += 2 + sum(8 if part.get("type") == "image_url" else len(part["text"].split()) for part in parts)
    return count


class FakeOpenAI:
    """``/v1/models``, streamed ``/v1/chat/completions`` and ``/tokenize`` on 127.0.0.1, recording requests.

    The answer is ``words`` pieces ``"w0 "``, ``"w1 "``... sent ``delay`` seconds
    apart; ``disconnected`` is set when a client hangs up mid-stream. Tokens are
    counted by :func:`fake_token_count`; with ``tokenize=False`` the server has
    no ``/tokenize`` (as most servers other than vLLM). ``refusal`` (status,
    JSON body) answers every chat request instead; ``failure`` (a JSON body)
    is sent as an error event after the words, where ``[DONE]`` would be.
    """

    def __init__(
        self,
        *,
        words: int = 5,
        delay: float = 0.0,
        api_key: str | None = None,
        max_model_len: int = 512,
        tokenize: bool = True,
        refusal: tuple[int, dict] | None = None,
        failure: dict | None = None,
    ):
        self.words, self.delay, self.api_key = words, delay, api_key
        self.max_model_len, self.tokenize = max_model_len, tokenize
        self.refusal, self.failure = refusal, failure
        self.tokenize_requests: list[dict] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.disconnected = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def refuse_without_key(self) -> bool:
                # Header names are case-insensitive (the openai client sends them lower-case): kept lower-cased.
                fake.headers.append({name.lower(): value for name, value in self.headers.items()})
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
                self.reply(200, {"object": "list", "data": [{"id": "tiny-yuren", "max_model_len": fake.max_model_len}]})

            def do_POST(self):
                if self.refuse_without_key():
                    return
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/tokenize":
                    if not fake.tokenize:
                        self.reply(404, {"detail": "Not Found"})
                        return
                    fake.tokenize_requests.append(request)
                    count = fake_token_count(request["messages"])
                    self.reply(200, {"count": count, "max_model_len": fake.max_model_len, "tokens": [0] * count})
                    return
                fake.requests.append(request)
                if fake.refusal:
                    self.reply(*fake.refusal)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for i in range(fake.words):
                        chunk = {"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(fake.delay)
                    end = f"data: {json.dumps(fake.failure)}" if fake.failure else "data: [DONE]"
                    self.wfile.write(f"{end}\n\n".encode())
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
    assert all(h.get("authorization") == "Bearer k3y" for h in server.headers)

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


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": "prompt too long for this model", "type": "BadRequestError", "code": 400}},
        {"object": "error", "message": "prompt too long for this model", "type": "BadRequestError", "code": 400},
    ],
    ids=["error-object", "flat"],  # vLLM's newer and older shapes
)
def test_a_refused_chat_is_a_server_error_with_the_status_and_the_servers_words(fake_openai, body):
    server = fake_openai(refusal=(400, body))
    backend = OpenAIBackend(server.url)
    messages = [{"role": "user", "content": [{"type": "text", "text": "go"}]}]
    with pytest.raises(ServerError, match=r"/v1/chat/completions answered 400: prompt too long for this model$"):
        list(backend.stream(messages, [], GenerationParams(max_new_tokens=5), threading.Event()))


def test_an_error_in_the_middle_of_the_answer_is_a_server_error(fake_openai):
    server = fake_openai(words=2, failure={"error": {"message": "engine died", "type": "InternalServerError"}})
    backend = OpenAIBackend(server.url)
    received = []
    messages = [{"role": "user", "content": [{"type": "text", "text": "go"}]}]
    with pytest.raises(ServerError, match="failed while answering: engine died"):
        for piece in backend.stream(messages, [], GenerationParams(max_new_tokens=5), threading.Event()):
            received.append(piece)
    assert received == ["w0 ", "w1 "]


def test_the_environments_openai_account_is_not_sent_to_the_server(fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-users-own")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-the-users-own")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-the-users-own")
    server = fake_openai(words=1)
    backend = OpenAIBackend(server.url)
    list(backend.stream([{"role": "user", "content": "hi"}], [], GenerationParams(max_new_tokens=1), threading.Event()))
    assert server.requests and server.tokenize_requests  # the chat and the token counts went out, all checked below
    assert all(h.get("authorization") == f"Bearer {NO_API_KEY}" for h in server.headers)
    assert not any("the-users-own" in value for h in server.headers for value in h.values())


def long_conversation() -> tuple[list[dict], list[str]]:
    """System prompt and three user turns, images in the first and last; 41 fake tokens (37 without the system)."""
    messages = [
        {"role": "system", "content": "be brief"},  # 4
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nfirst question here"}]},  # 13
        {"role": "assistant", "content": "answer one"},  # 4
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},  # 4
        {"role": "assistant", "content": "answer two"},  # 4
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nthird"}]},  # 11
    ]
    return messages, ["data:one", "data:two"]


def test_tokens_are_counted_where_vllm_serves_them():
    assert tokenize_url("http://host:8000/v1") == "http://host:8000/tokenize"
    assert tokenize_url("http://host:8000/v1/") == "http://host:8000/tokenize"
    assert tokenize_url("https://host/llm") == "https://host/llm/tokenize"


def test_history_is_fitted_to_the_context_the_server_counts(fake_openai):
    server = fake_openai(max_model_len=30)
    backend = OpenAIBackend(server.url)
    assert backend.cannot_count_tokens is None
    messages, images = long_conversation()
    # Without the system prompt and with a one-token answer, the first turn (13 + 4) cannot fit 30 tokens ever again.
    assert backend.unreachable_turns(messages, images) == 1
    assert backend.unreachable_turns(messages[3:], images[1:]) == 0

    # 10 tokens for the answer leave 20: only the system prompt and the newest turn (16) fit, with its image.
    assert list(backend.stream(messages, images, GenerationParams(max_new_tokens=10), threading.Event()))
    sent = server.requests[-1]["messages"]
    assert sent == openai_messages([messages[0], messages[-1]], ["data:two"])
    assert server.tokenize_requests[-1]["add_generation_prompt"] is True

    # 16 for the answer leave 14: not even the newest turn fits, and nothing is sent.
    chats = len(server.requests)
    with pytest.raises(PromptTooLong) as too_long:
        list(backend.stream(messages, images, GenerationParams(max_new_tokens=16), threading.Event()))
    assert (too_long.value.prompt_tokens, too_long.value.context_length) == (16, 30)
    assert len(server.requests) == chats


def test_server_that_cannot_count_gets_the_history_whole_and_the_reason_is_kept(fake_openai):
    server = fake_openai(max_model_len=30, tokenize=False)
    backend = OpenAIBackend(server.url)
    assert f"POST {server.url.removesuffix('/v1')}/tokenize" in backend.cannot_count_tokens
    assert "404" in backend.cannot_count_tokens
    messages, images = long_conversation()
    assert backend.unreachable_turns(messages, images) == 0
    list(backend.stream(messages, images, GenerationParams(max_new_tokens=16), threading.Event()))
    assert server.requests[-1]["messages"] == openai_messages(messages, images)


@pytest.mark.slow
def test_ui_over_the_server_answers_through_gradio_client(fake_openai, tmp_path):
    server = fake_openai(words=3)
    backend = OpenAIBackend(server.url)
    app = build_app(backend, lang="en", limits=Limits(), defaults=GenerationParams(temperature=0, max_new_tokens=16))
    with served(app) as url:
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


def test_cli_refuses_a_key_file_without_api_base(tmp_path, capsys):
    from webui.__main__ import main

    key = tmp_path / "key"
    key.write_text("k3y\n")
    with pytest.raises(SystemExit):
        main(["--api_key_file", str(key)])
    assert "--api_key_file needs --api_base" in capsys.readouterr().err


def test_cli_reports_an_unreachable_server(capsys):
    from webui.__main__ import main

    port = free_port()
    with pytest.raises(SystemExit) as exit_info:
        main(["--api_base", f"http://127.0.0.1:{port}/v1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # What was tried and why it failed, not the client's bare "Connection error."
    assert "cannot reach the server" in err and f"cannot connect to http://127.0.0.1:{port}/v1/models" in err
    assert "refused" in err


def test_cli_warns_when_the_server_cannot_count_tokens(fake_openai, monkeypatch, capsys):
    import webui.__main__ as cli

    served = []
    monkeypatch.setattr(cli, "serve_backend", lambda args, auth, backend, model_name: served.append(backend))
    counting, not_counting = fake_openai(), fake_openai(tokenize=False)
    cli.main(["--api_base", counting.url])
    assert "warning" not in capsys.readouterr().err
    cli.main(["--api_base", not_counting.url])
    err = capsys.readouterr().err
    assert "history goes to" in err and "whole" in err and "/tokenize" in err and "404" in err
    assert [backend.cannot_count_tokens is None for backend in served] == [True, False]


# `webui --api_base URL IMAGE` in a fresh process, as the command runs, except that the UI is launched without
# blocking: one chat with IMAGE goes through it, and the process prints the answer and whether torch was loaded.
REMOTE_PROBE = """
import json, sys
import gradio_client
import webui.__main__ as cli
import webui.server

launch = webui.server.serve

def serve_and_chat(app, **settings):
    _, url, _ = launch(app, **settings, prevent_thread_lock=True, quiet=True)
    client = gradio_client.Client(url, verbose=False)
    message = {"text": "what is this?", "files": [gradio_client.handle_file(sys.argv[-1])]}
    history, _ = client.predict(message, api_name="/chat")
    print(json.dumps([history[-1]["content"][0]["text"], "torch" in sys.modules]), flush=True)
    app.close()

webui.server.serve = serve_and_chat
cli.main(sys.argv[1:-1])
"""


@pytest.mark.slow
def test_the_ui_over_a_server_never_loads_torch(fake_openai, tmp_path):
    """Serving and answering over ``--api_base`` leaves torch unloaded: the command starts fast and small."""
    server = fake_openai(words=3, max_model_len=4096)  # the UI's default max_new_tokens is 512
    picture = tmp_path / "blue.png"
    Image.new("RGB", (8, 8), (0, 0, 255)).save(picture)
    env = {name: value for name, value in os.environ.items() if name != AUTH_ENV}
    done = subprocess.run(
        [sys.executable, "-c", REMOTE_PROBE, "--api_base", server.url, "--lang", "en", str(picture)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    answer, torch_loaded = json.loads(done.stdout.splitlines()[0])
    assert answer == "w0 w1 w2 " and torch_loaded is False
    assert server.requests[-1]["messages"][-1]["content"][0]["type"] == "image_url"  # the upload went through
