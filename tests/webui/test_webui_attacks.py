"""The web UI under attack, on real servers on 127.0.0.1: request bounds, login guessing, queue flooding,
Stop on waiting requests, unencodable text, malformed API input, long chats and thin images.

Raw HTTP speaks Gradio's queue protocol directly (join, then read the session's event stream), which is
what an attacker would use; gradio_client is what API users use.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from gradio.data_classes import PredictBody
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from repo_helpers import free_port
from webui_helpers import gated_server, served, user_texts, wait_for

from webui.app import Limits, build_app
from webui.backend import GenerationParams
from webui.engine import ModelBackend
from webui.guard import BodyLimits, waiting_events
from webui.labels import EN
from webui.server import serve

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"


def fn_index(url: str, api_name: str) -> int:
    config = httpx.get(f"{url}config").json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)


def join(url: str, fn, data: list, session_hash: str, headers: dict | None = None) -> httpx.Response:
    """Queue a call the way the browser does; the body is JSON with non-ASCII escaped (as lone surrogates are)."""
    body = json.dumps({"data": data, "fn_index": fn, "session_hash": session_hash, "trigger_id": None})
    headers = {"content-type": "application/json", **(headers or {})}
    return httpx.post(f"{url}gradio_api/queue/join", content=body.encode("ascii"), headers=headers)


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def reply_to_head(port: int, head: bytes, timeout: float = 5.0) -> bytes:
    """Send only a request's head (its body declared, never sent): what the server answers within ``timeout``."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        raw.sendall(head)
        with contextlib.suppress(TimeoutError):
            while b"}" not in reply:  # the JSON body may come in a packet of its own
                chunk = raw.recv(4096)
                if not chunk:
                    break
                reply += chunk
    return reply


def message_data(text: str, files: list | None = None, system: str = "sys") -> list:
    return [{"text": text, "files": files or []}, None, system, 0.9, 0, 8, 1.1]


def outcome(url: str, session_hash: str) -> dict:
    """The session's next completed call, read from its event stream."""
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session_hash}, timeout=30) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event stream ended without a result")


def raw_chat(url: str, text, session_hash: str, system: str = "sys") -> dict:
    response = join(url, fn_index(url, "chat"), [{"text": text, "files": []}, None, system, 0.9, 0, 8, 1.1],
                    session_hash)  # fmt: skip
    assert response.status_code == 200, response.text
    return outcome(url, session_hash)


def test_request_bodies_are_bounded_before_parsing(fake_backend):
    limits = Limits()
    bounds = BodyLimits.from_limits(limits)
    app = build_app(fake_backend(), lang="en", limits=limits)
    with served(app, limits=limits) as url:
        port = port_of(url)
        # A 100 MB body is refused from its header: the server answers before a byte of it is sent.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(
                b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 104857600\r\n\r\n{"
            )
            reply = b""
            while b"}" not in reply:  # the JSON body may come in a packet of its own
                chunk = raw.recv(4096)
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 413") and b"The request is too large" in reply

        chat = fn_index(url, "chat")
        over = join(url, chat, [{"text": "x" * bounds.json_bytes, "files": []}], "s1")
        assert over.status_code == 413 and "too large: the limit is" in over.json()["detail"]

        def chunks():
            yield b'{"data": ['
            yield b"]}"

        unframed = httpx.post(
            f"{url}gradio_api/queue/join", content=chunks(), headers={"content-type": "application/json"}
        )
        assert unframed.status_code == 411 and "Content-Length" in unframed.json()["detail"]

        many = [("files", (f"f{i}.png", b"\x89PNG", "image/png")) for i in range(1000)]
        refused = httpx.post(f"{url}gradio_api/upload", files=many)
        assert refused.status_code == 413 and "at most 4" in refused.json()["detail"]
        five = httpx.post(f"{url}gradio_api/upload", files=many[:5])
        assert five.status_code == 413
        four = httpx.post(f"{url}gradio_api/upload", files=many[:4])
        assert four.status_code == 200 and len(four.json()) == 4
        assert httpx.post(f"{url}login", content=b"x" * (bounds.json_bytes + 1)).status_code == 413

        # The largest legitimate request still passes: every character of message and system prompt escaped.
        client = Client(url, verbose=False)
        longest = "\x01" * limits.max_text_chars
        history, _ = client.predict({"text": longest, "files": []}, "\x02" * limits.max_system_chars, api_name="/chat")
        assert user_texts(history) == [longest]


def test_failed_logins_are_slowed_per_client(fake_backend):
    app = build_app(fake_backend(), lang="en")
    with served(app, auth=("alice", PASSWORD)) as url:
        checked, refused, start = 0, None, time.monotonic()
        with httpx.Client() as http:
            while time.monotonic() - start < 2.0:
                response = http.post(f"{url}login", data={"username": "alice", "password": f"guess{checked}"})
                if response.status_code == 429:
                    refused = response
                else:
                    assert response.status_code == 400
                    checked += 1
            # Three failures cost nothing; from the fourth each doubles the wait (1 s, 2 s, ...): at most
            # five guesses are checked in two seconds (unthrottled, 300 were).
            assert checked <= 5
            assert "Too many failed logins; try again in" in refused.json()["detail"]
            wait = int(refused.headers["retry-after"])
            # While locked out even the right password is not checked: no way to learn it is right.
            assert http.post(f"{url}login", data={"username": "alice", "password": PASSWORD}).status_code == 429
            time.sleep(wait + 0.2)
            assert http.post(f"{url}login", data={"username": "alice", "password": PASSWORD}).status_code == 200
        history, _ = Client(url, auth=("alice", PASSWORD), verbose=False).predict(
            {"text": "hi", "files": []}, api_name="/chat"
        )
        assert user_texts(history) == ["hi"]


def test_serve_refuses_a_short_password(fake_backend):
    app = build_app(fake_backend(), lang="en")
    with pytest.raises(ValueError, match="at least 10"):
        serve(app, auth=("alice", "s3cret"), prevent_thread_lock=True, quiet=True)
    assert not app.is_running


def test_one_session_cannot_take_the_queue(fake_backend):
    limits = Limits(queue_size=6, max_waiting_per_address=None)
    with gated_server(fake_backend, limits) as (backend, gate, url):
        mallory = Client(url, verbose=False)
        flood = [mallory.submit({"text": f"flood {i}", "files": []}, api_name="/chat") for i in range(20)]
        wait_for(lambda: len(backend.calls) == 1 and sum(job.done() for job in flood) >= 18)
        refusals = []
        for job in flood:
            if job.done():
                with pytest.raises(httpx.HTTPStatusError) as refused:
                    job.result()
                refusals.append(refused.value.response)
        assert len(refusals) == 18 and {response.status_code for response in refusals} == {429}
        more = [{"text": "one more", "files": []}, None, "sys", 0.9, 0, 8, 1.1]
        again = join(url, fn_index(url, "chat"), more, mallory.session_hash)
        assert again.status_code == 429
        assert again.json()["detail"] == EN.session_queue_full.format(limit=1)
        # Everyone else still gets in line, and is served.
        others = [Client(url, verbose=False) for _ in range(3)]
        jobs = [client.submit({"text": f"user {i}", "files": []}, api_name="/chat") for i, client in enumerate(others)]
        time.sleep(0.5)
        assert not any(job.done() for job in jobs)
        gate.set()
        for i, job in enumerate(jobs):
            assert user_texts(job.result(timeout=30)[0]) == [f"user {i}"]
        assert len(backend.calls) == 5  # mallory's running and waiting ones, and the three others


def test_one_address_cannot_take_the_queue(fake_backend):
    with gated_server(fake_backend, Limits(queue_size=8, max_waiting_per_address=2)) as (backend, _, url):
        chat = fn_index(url, "chat")
        sessions = [uuid.uuid4().hex for _ in range(4)]

        def message(text):
            return [{"text": text, "files": []}, None, "sys", 0.9, 0, 8, 1.1]

        assert join(url, chat, message("a"), sessions[0]).status_code == 200
        wait_for(lambda: len(backend.calls) == 1)
        assert join(url, chat, message("b"), sessions[1]).status_code == 200
        assert join(url, chat, message("c"), sessions[2]).status_code == 200
        refused = join(url, chat, message("d"), sessions[3])
        assert refused.status_code == 429
        assert refused.json()["detail"] == EN.address_queue_full.format(limit=2)


def test_stop_cancels_a_waiting_request_through_the_api(fake_backend):
    with gated_server(fake_backend) as (backend, gate, url):
        alice, bob = Client(url, verbose=False), Client(url, verbose=False)
        bob_job = bob.submit({"text": "bob", "files": []}, api_name="/chat")
        wait_for(lambda: len(backend.calls) == 1)
        alice_job = alice.submit({"text": "alice", "files": []}, api_name="/chat")
        time.sleep(0.5)  # alice's request is waiting behind bob's
        alice.predict(api_name="/stop")
        with pytest.raises(AppError, match="never started"):
            alice_job.result(timeout=20)
        gate.set()
        assert user_texts(bob_job.result(timeout=20)[0]) == ["bob"]
        time.sleep(0.5)
        assert len(backend.calls) == 1  # alice's request never reached the model
        history, _ = alice.predict({"text": "alice again", "files": []}, api_name="/chat")
        assert user_texts(history) == ["alice again"]


def test_unencodable_text_is_refused_and_the_conversation_survives(fake_backend):
    app = build_app(fake_backend(), lang="en")
    with served(app) as url:
        session = uuid.uuid4().hex
        assert raw_chat(url, "first", session)["success"]
        for text, system in (("\ud800", "sys"), ("fine", "\udfff")):
            failed = raw_chat(url, text, session, system=system)
            assert not failed["success"] and "cannot be encoded" in failed["output"]["error"]
        later = raw_chat(url, "second", session)
        assert later["success"]
        assert user_texts(later["output"]["data"][0]) == ["first", "second"]
        retried = join(url, fn_index(url, "retry"), [None, "sys", 0.9, 0, 8, 1.1], session)
        assert retried.status_code == 200 and outcome(url, session)["success"]


def test_every_error_reaches_api_users_with_a_message(fake_backend):
    backend = fake_backend()
    app = build_app(backend, lang="en")
    with served(app) as url:
        session = uuid.uuid4().hex
        response = join(url, fn_index(url, "chat"), ["just a string", None, "sys", 0.9, 0, 8, 1.1], session)
        failed = outcome(url, session)
        assert response.status_code == 200 and not failed["success"] and failed["output"]["error"]

        def broken(messages, images):
            raise RuntimeError("secret internals")

        backend.unreachable_turns = broken
        with pytest.raises(AppError, match=r"went wrong on the server \(RuntimeError\)") as reported:
            Client(url, verbose=False).predict({"text": "hi", "files": []}, api_name="/chat")
        assert "secret" not in str(reported.value)


def test_history_stays_bounded_in_a_long_chat(fused):
    backend = ModelBackend(*fused, context_length=192)
    app = build_app(backend, lang="en", defaults=GenerationParams(temperature=0, max_new_tokens=8))
    with served(app) as url:
        client = Client(url, verbose=False)
        seconds = []
        for i in range(16):
            start = time.perf_counter()
            message = {"text": f"turn {i}: " + "tell me more " * 6, "files": []}
            history, _ = client.predict(message, "Be brief.", api_name="/chat")
            seconds.append(time.perf_counter() - start)
        kept = user_texts(history)
        assert 1 <= len(kept) < 16 and kept[-1].startswith("turn 15:")
        dropped = 16 - len(kept)
        assert history[0]["content"][0]["text"] == EN.turns_dropped.format(count=dropped, context_length=192)
        print(f"\nanswer times (s): first {seconds[0]:.3f}, last {seconds[-1]:.3f}; {dropped} turns dropped")


SERVER = textwrap.dedent(
    """
    import sys
    from webui.app import Limits, build_app
    from webui.engine import ModelBackend
    from webui.server import serve

    aspect = None if sys.argv[3] == "none" else int(sys.argv[3])
    limits = Limits(max_aspect_ratio=aspect)
    app = build_app(ModelBackend.from_pretrained(sys.argv[1]), lang="en", limits=limits)
    serve(app, limits=limits, server_port=int(sys.argv[2]), quiet=True)
    """
)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@contextlib.contextmanager
def model_server_process(model_dir, aspect: str, log):
    port = free_port()
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(model_dir), str(port), aspect], stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}config", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield process, url
    finally:
        process.terminate()
        process.wait(timeout=30)


# Peak memory the server may add to preprocess one thin or tall image (it took 5.7 GB for 1 x 1,000,000).
IMAGE_BUDGET_MIB = 128


def test_thin_and_tall_images_take_bounded_memory(fused_model_dir, tmp_path):
    shapes = [(1, 1_000_000), (1_000_000, 1), (2, 2_000_000), (3_000_000, 3)]
    paths = []
    for width, height in shapes:
        path = tmp_path / f"{width}x{height}.png"
        Image.new("RGB", (width, height), (200, 30, 30)).save(path)
        paths.append(path)
    warmup = tmp_path / "warmup.png"
    Image.new("RGB", (300, 200), (20, 200, 30)).save(warmup)

    with model_server_process(fused_model_dir, "none", tmp_path / "server.log") as (process, url):
        client = Client(url, verbose=False)
        client.predict({"text": "warm up", "files": [handle_file(str(warmup))]}, max_new_tokens=2, api_name="/chat")
        for path in paths:
            client.predict(api_name="/new_conversation")
            before = peak_rss_mib(process.pid)
            start = time.perf_counter()
            history, _ = client.predict({"text": "look", "files": [handle_file(str(path))]}, max_new_tokens=2,
                                        api_name="/chat")  # fmt: skip
            elapsed = time.perf_counter() - start
            grown = peak_rss_mib(process.pid) - before
            print(f"\n{path.name}: peak grew {grown:.1f} MiB in {elapsed:.2f} s")
            assert user_texts(history) == ["look"]
            assert grown < IMAGE_BUDGET_MIB, (path.name, grown)

    with model_server_process(fused_model_dir, "25", tmp_path / "server25.log") as (process, url):
        with pytest.raises(AppError, match=r"1×1000000 pixels: one side is more than 25 times the other"):
            Client(url, verbose=False).predict({"text": "look", "files": [handle_file(str(paths[0]))]},
                                                api_name="/chat")  # fmt: skip


def test_the_simple_call_api_is_capped_too(fake_backend):
    with gated_server(fake_backend, Limits(queue_size=8, max_waiting_per_address=2)) as (_, _, url):
        data = {"data": [{"text": "call", "files": []}, "sys", 0.9, 0, 8, 1.1]}
        statuses = [httpx.post(f"{url}gradio_api/call/chat", json=data).status_code for _ in range(6)]
        # One running (once the first reaches the model) and two waiting; the rest refused.
        assert statuses.count(200) <= 3 and statuses[-1] == 429
        refused = httpx.post(f"{url}gradio_api/call/v2/chat", json={"message": {"text": "v2", "files": []}})
        assert refused.status_code == 429


def test_a_page_still_opening_does_not_hold_up_its_first_message(fake_backend):
    """What a page queues by itself when it opens (today's date for the system prompt) is not a waiting message."""
    backend = fake_backend()
    app = build_app(backend, lang="en")
    opening = next(index for index, fn in app.fns.items() if any(target[1] == "load" for target in fn.targets))
    load = app.fns[opening]
    held = threading.Event()
    original = load.fn

    def slow_load(*args):
        held.wait(20)
        return original(*args)

    load.fn = slow_load
    with served(app) as url:
        try:
            # Another page's opening runs (held); this page's opening waits behind it in its own group.
            assert join(url, opening, [], uuid.uuid4().hex).status_code == 200
            wait_for(lambda: len(waiting_events(app)) == 0)
            page = uuid.uuid4().hex
            assert join(url, opening, [], page).status_code == 200
            wait_for(lambda: [event.session_hash for event in waiting_events(app)] == [page])
            message = [{"text": "typed at once", "files": []}, None, "sys", 0.9, 0, 8, 1.1]
            assert join(url, fn_index(url, "chat"), message, page).status_code == 200
            assert user_texts(outcome(url, page)["output"]["data"][0]) == ["typed at once"]
        finally:
            held.set()


def test_only_gradios_upload_route_takes_an_upload_sized_body(fake_backend):
    """Upload-sized bodies go to Gradio's upload route alone, and with a login required, to logged-in clients only.

    Every refusal comes from the request's head: the body is never read.
    """
    limits = Limits()
    bounds = BodyLimits.from_limits(limits)
    app = build_app(fake_backend(), lang="en", limits=limits)
    with served(app, limits=limits, auth=("alice", PASSWORD)) as url:
        port = port_of(url)

        def head(path: str, cookie: str = "") -> bytes:
            return (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {bounds.upload_bytes}\r\n{cookie}\r\n"
            ).encode()

        paths = ["/gradio_api/call/upload", "/gradio_api/run/upload", "/gradio_api/call/v2/upload", "/upload",
                 "/gradio_api/upload/", "/gradio_api/queue/join", "/gradio_api/anything/upload"]  # fmt: skip
        for path in [*paths, "/gradio_api/upload"]:
            assert reply_to_head(port, head(path)).startswith(b"HTTP/1.1 401"), path
        logged_in = httpx.post(f"{url}login", data={"username": "alice", "password": PASSWORD})
        assert logged_in.status_code == 200
        cookie = "Cookie: " + "; ".join(f"{name}={value}" for name, value in logged_in.cookies.items()) + "\r\n"
        for path in paths:
            reply = reply_to_head(port, head(path, cookie))
            assert reply.startswith(b"HTTP/1.1 413") and b"The request is too large" in reply, path
        uploaded = httpx.post(
            f"{url}gradio_api/upload", files={"files": ("a.png", b"\x89PNG", "image/png")}, cookies=logged_in.cookies
        )
        assert uploaded.status_code == 200 and len(uploaded.json()) == 1


def test_every_spelling_of_an_fn_index_is_capped(fake_backend):
    with gated_server(fake_backend, Limits(queue_size=8, max_waiting_per_address=2)) as (backend, _, url):
        chat = fn_index(url, "chat")
        spellings = [str(chat), float(chat), f" {chat} ", f"+{chat}", f"0{chat}", f"{chat}.0"]
        spellings += [bool(chat)] if chat in (0, 1) else []
        # Gradio runs the chat for each of them.
        assert {PredictBody.model_validate({"data": [], "fn_index": s}).fn_index for s in spellings} == {chat}
        alice, bob, carol = (uuid.uuid4().hex for _ in range(3))
        assert join(url, chat, message_data("running"), alice).status_code == 200
        wait_for(lambda: len(backend.calls) == 1)
        assert join(url, chat, message_data("waiting"), alice).status_code == 200
        for spelling in spellings:
            refused = join(url, spelling, message_data("more"), alice)
            assert refused.status_code == 429, spelling
            assert refused.json()["detail"] == EN.session_queue_full.format(limit=1)
        assert join(url, chat, message_data("bob waits"), bob).status_code == 200
        for spelling in spellings:
            refused = join(url, spelling, message_data("more"), carol)
            assert refused.status_code == 429, spelling
            assert refused.json()["detail"] == EN.address_queue_full.format(limit=2)


@pytest.mark.parametrize("proxy", [None, "127.0.0.1"])
def test_forwarded_addresses_count_only_from_a_named_proxy(fake_backend, proxy):
    app = build_app(fake_backend(), lang="en")
    with served(app, auth=("alice", PASSWORD), trusted_proxies=[proxy] if proxy else []) as url:
        statuses = []
        for i in range(5):
            forwarded = {"X-Forwarded-For": f"203.0.113.{i}"}
            response = httpx.post(f"{url}login", data={"username": "alice", "password": f"guess{i}"}, headers=forwarded)
            statuses.append(response.status_code)
    if proxy is None:
        # One client, whatever it claims: three free failures, a fourth, then a wait.
        assert statuses == [400, 400, 400, 400, 429]
    else:
        assert statuses == [400] * 5  # five clients behind the proxy, each with its own record


def test_upload_volume_is_bounded_per_client_and_in_total(fake_backend):
    limits = Limits(max_images_per_message=1, max_file_size="1mb", upload_rate="3mb", upload_storage="2mb")
    app = build_app(fake_backend(), lang="en", limits=limits)
    with served(app, limits=limits) as url:

        def upload(i: int) -> httpx.Response:
            return httpx.post(
                f"{url}gradio_api/upload", files={"files": (f"f{i}.png", os.urandom(900_000), "image/png")}
            )

        stored = []
        for i in range(3):
            response = upload(i)
            assert response.status_code == 200
            stored += response.json()
        # Two uploads of 0.9 MB fit in 2 MB: the third pushed out the first.
        wait_for(lambda: [Path(path).exists() for path in stored] == [False, True, True])
        refused = upload(3)  # 3.6 MB within a minute, over 3 MB
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert refused.json()["detail"].startswith("Uploading too much too fast: at most 3,072 KiB per minute")


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; BOUNDARY=b0undary",
        'multipart/form-data; boundary = "b0undary"',
        'Multipart/Form-Data;Boundary="b0undary"',
        "multipart/form-data; charset=utf-8; boundary=b0undary",
    ],
)
def test_the_file_cap_reads_the_boundary_as_gradio_does(fake_backend, content_type):
    app = build_app(fake_backend(), lang="en")
    with served(app) as url:

        def post(count: int, header: str = content_type) -> httpx.Response:
            parts = b"".join(
                b'--b0undary\r\nContent-Disposition: form-data; name="files"; filename="f%d.png"\r\n'
                b"Content-Type: image/png\r\n\r\n\x89PNG\r\n" % i
                for i in range(count)
            )
            body = parts + b"--b0undary--\r\n"
            return httpx.post(f"{url}gradio_api/upload", content=body, headers={"content-type": header})

        assert post(5).status_code == 413 and "at most 4" in post(5).json()["detail"]
        four = post(4)
        assert four.status_code == 200 and len(four.json()) == 4
        duplicated = f"{content_type}; boundary=other"
        for header in (duplicated, duplicated.replace("boundary=other", "BOUNDARY=b0undary"), "multipart/form-data"):
            refused = post(5, header)
            assert refused.status_code == 400 and refused.json()["detail"] == EN.bad_multipart, header


def test_idle_conversations_are_forgotten_past_the_session_cap(fake_backend):
    limits = Limits(max_sessions=2)
    app = build_app(fake_backend(), lang="en", limits=limits)
    with served(app, limits=limits) as url:
        sessions = [uuid.uuid4().hex for _ in range(3)]
        for i, session in enumerate(sessions):
            assert raw_chat(url, f"first {i}", session)["success"]
        # The third conversation pushed out the least recently used one, the first; the second is whole.
        assert user_texts(raw_chat(url, "again", sessions[1])["output"]["data"][0]) == ["first 1", "again"]
        assert user_texts(raw_chat(url, "again", sessions[0])["output"]["data"][0]) == ["again"]


def test_other_hosts_and_other_pages_are_refused(fake_backend):
    app = build_app(fake_backend(), lang="en")
    with served(app) as url:
        port = port_of(url)
        rebound = httpx.get(url, headers={"Host": f"attacker.example:{port}"})
        assert rebound.status_code == 421
        assert rebound.json()["detail"] == EN.host_refused.format(host=f"attacker.example:{port}")
        assert httpx.get(url, headers={"Host": f"localhost:{port}"}).status_code == 200
        chat, session = fn_index(url, "chat"), uuid.uuid4().hex
        for origin in ("http://attacker.example", f"http://localhost:{port + 1}", "null"):
            refused = join(url, chat, message_data("hi"), session, headers={"Origin": origin})
            assert refused.status_code == 403 and refused.json()["detail"] == EN.origin_refused.format(origin=origin)
            upload = httpx.post(
                f"{url}gradio_api/upload", files={"files": ("a.png", b"\x89PNG")}, headers={"Origin": origin}
            )
            assert upload.status_code == 403
        assert join(url, chat, message_data("hi"), session, headers={"Origin": url.rstrip("/")}).status_code == 200
        assert outcome(url, session)["success"]


def test_the_longest_message_passes_however_json_escapes_it(fake_backend):
    """The body bound holds every character as its longest JSON escape: an emoji is two \\uXXXX escapes."""
    limits = Limits()
    app = build_app(fake_backend(), lang="en", limits=limits)
    with served(app, limits=limits) as url:
        chat, session = fn_index(url, "chat"), uuid.uuid4().hex
        for char in ("\U0001f600", "\x01", "中"):
            text, system = char * limits.max_text_chars, char * limits.max_system_chars
            assert join(url, chat, message_data(text, system=system), session).status_code == 200
            done = outcome(url, session)
            assert done["success"] and user_texts(done["output"]["data"][0])[-1] == text


def test_a_file_never_uploaded_is_named_not_located(fake_backend):
    app = build_app(fake_backend(), lang="en")
    with served(app) as url:
        chat, session = fn_index(url, "chat"), uuid.uuid4().hex
        for path in ("x.png", "../../x.png", os.path.join(os.getcwd(), "x.png"), "/etc/x.png"):
            files = [{"path": path, "meta": {"_type": "gradio.FileData"}}]
            for response in (
                join(url, chat, message_data("look", files), session),
                httpx.post(f"{url}gradio_api/call/chat", json={"data": message_data("look", files)[:1]}),
            ):
                assert response.status_code == 400
                assert response.json()["detail"] == EN.file_not_uploaded.format(name="x.png")
                assert os.getcwd() not in response.text and tempfile.gettempdir() not in response.text
