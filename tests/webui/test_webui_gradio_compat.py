"""The Gradio seams the web UI relies on (webui.gradio_compat): each fails here, loudly, when Gradio changes it."""

from __future__ import annotations

import asyncio

import gradio
import httpx
from gradio.routes import App

from webui.app import build_app
from webui.gradio_compat import (
    CALL_ROUTES,
    GRADIO_MAJOR,
    LOGIN_ROUTE,
    QUEUE_JOIN_ROUTE,
    UPLOAD_ROUTE,
    parse_size,
    queued_fn_index,
    route_of,
    upload_forgetter,
    waiting_events,
)


def test_gradio_is_the_major_version_the_seams_were_written_for():
    assert int(gradio.__version__.split(".")[0]) == GRADIO_MAJOR


def test_sizes_and_fn_indexes_are_read_as_gradio_reads_them():
    assert parse_size("20mb") == 20 * 1024 * 1024 and parse_size("2 GB") == 2 * 1024**3
    assert [queued_fn_index({"data": [], "fn_index": value}) for value in (3, "3", 3.0, " +3 ", True)] == [
        3,
        3,
        3,
        3,
        1,
    ]
    assert queued_fn_index({"data": [], "fn_index": "x"}) is None and queued_fn_index({"fn_index": 3}) is None


def test_routes_are_matched_under_a_root_path():
    def scope(path: str, root: str = "") -> dict:
        return {"type": "http", "path": path, "root_path": root}

    assert route_of(scope("/gradio_api/upload")) == (UPLOAD_ROUTE, {})
    assert route_of(scope("/ui/gradio_api/upload", "/ui")) == (UPLOAD_ROUTE, {})
    assert route_of(scope("/ui/gradio_api/call/upload", "/ui")) == (CALL_ROUTES[0], {"api_name": "upload"})
    assert route_of(scope("/gradio_api/call/v2/chat/")) == (CALL_ROUTES[1], {"api_name": "chat"})
    for path in ("/gradio_api/upload/", "/x/gradio_api/upload", "/gradio_api/run/upload", "/upload"):
        assert route_of(scope(path)) is None, path


def test_gradio_still_serves_the_routes_and_keeps_the_state_the_guard_reads(fake_backend):
    blocks = build_app(fake_backend(), lang="en")
    blocks.max_file_size = None  # launch sets it; the upload route reads it
    app = App.create_app(blocks)
    # The App's login record the guard checks cookies against.
    assert isinstance(app.tokens, dict) and isinstance(app.cookie_id, str) and app.auth is None
    # The queue the guard counts and cancels in.
    assert waiting_events(blocks) == [] and callable(blocks._queue.remove_from_queue)
    assert isinstance(blocks._queue.pending_messages_per_session, dict)
    upload_forgetter(blocks)("/nowhere")  # Gradio's set of uploaded files

    async def statuses() -> dict[str, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            paths = [UPLOAD_ROUTE, QUEUE_JOIN_ROUTE, LOGIN_ROUTE, *(r.format(api_name="chat") for r in CALL_ROUTES)]
            return {path: (await client.post(path, content=b"{}")).status_code for path in paths}

    # Each route exists and takes a POST (a malformed body is refused, not routed elsewhere).
    for path, status in asyncio.run(statuses()).items():
        assert status not in (404, 405), (path, status)
