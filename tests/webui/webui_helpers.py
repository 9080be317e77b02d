"""Helpers shared by the web UI tests that launch real servers: serving an app, waiting, reading chat histories."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from repo_helpers import free_port

from webui.app import Limits, build_app
from webui.server import serve


@contextlib.contextmanager
def served(app, **settings) -> Iterator[str]:
    """``app`` served on a free port of 127.0.0.1 within the block: its URL. ``settings`` go to ``serve``."""
    _, url, _ = serve(app, server_port=free_port(), prevent_thread_lock=True, quiet=True, **settings)
    try:
        yield url
    finally:
        app.close()


@contextlib.contextmanager
def gated_server(backend_class, limits: Limits | None = None) -> Iterator[tuple[object, threading.Event, str]]:
    """A served app whose ``backend_class(gate=...)`` holds every answer until the gate is set: (backend, gate, url).

    The gate opens when the block ends, however it ends, so no generation keeps the server from closing.
    """
    gate = threading.Event()
    backend = backend_class(gate=gate)
    limits = limits or Limits()
    with served(build_app(backend, lang="en", limits=limits), limits=limits) as url:
        try:
            yield backend, gate, url
        finally:
            gate.set()


def wait_for(condition, timeout: float = 20.0) -> None:
    """Poll ``condition()`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def user_texts(history) -> list[str]:
    """The text of every user turn in a chat history (Gradio's message format)."""
    return [part["text"] for m in history if m["role"] == "user" for part in m["content"] if part["type"] == "text"]


def answer_of(history) -> str:
    """The text of the last turn of a chat history."""
    return history[-1]["content"][0]["text"]
