"""What the server checks before Gradio parses a request, and the queue bookkeeping Gradio lacks.

:class:`RequestGuard` is an ASGI middleware in front of the Gradio app. It

* bounds every request body before it is parsed: uploads by what one message
  may attach (files and their count), everything else by what the longest
  legitimate request (message plus system prompt) can take; a body without a
  declared length is refused, one over the bound gets a 413 with a message;
* slows failed logins per client (:class:`~webui.auth.LoginThrottle`);
* caps how many requests one session, and one client address, may have
  waiting in the queue for the same thing (the same concurrency group: the
  model, for chat and retry), so one user cannot fill it; what a page
  queues by itself when it opens (a component's value computed per page
  load) waits apart and does not count against a message.

:func:`cancel_waiting` takes a session's requests out of the queue (Stop).
This module is the only one that touches Gradio's queue internals
(``Blocks._queue``), which are stable across Gradio 6.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gradio.server_messages import ProcessCompletedMessage
from gradio.utils import _parse_file_size
from starlette.exceptions import HTTPException

from .auth import LoginThrottle, client_key

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

# Room for the JSON around a request's values: field names, session hash, event ids, numbers.
ENVELOPE_BYTES = 16 * 1024
# What one attached file's reference costs in a JSON request (path, URL, name, mime type, size).
FILE_REFERENCE_BYTES = 2 * 1024
# Worst-case JSON bytes per character: a lone surrogate or control character escapes as \uXXXX.
JSON_BYTES_PER_CHAR = 6
# Per file part of a multipart upload: boundary and part headers.
PART_OVERHEAD_BYTES = 4 * 1024


@dataclass(frozen=True)
class BodyLimits:
    """Largest request bodies accepted, in bytes, and how many files one upload may carry."""

    json_bytes: int
    upload_bytes: int
    upload_files: int

    @classmethod
    def from_limits(cls, limits) -> BodyLimits:
        """Size the bounds from the app's own :class:`~webui.app.Limits`."""
        file_bytes = _parse_file_size(limits.max_file_size)
        chars = limits.max_text_chars + limits.max_system_chars
        return cls(
            json_bytes=chars * JSON_BYTES_PER_CHAR
            + limits.max_images_per_message * FILE_REFERENCE_BYTES
            + ENVELOPE_BYTES,
            upload_bytes=limits.max_images_per_message * (file_bytes + PART_OVERHEAD_BYTES) + ENVELOPE_BYTES,
            upload_files=limits.max_images_per_message,
        )


class RequestRefused(HTTPException):
    """A request the guard refuses, with ``status`` and a message.

    An HTTP exception, so that raised while a route reads the body, Gradio's
    own exception handling still answers it with this status and message.
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.status = status
        self.message = message


async def respond(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Send a JSON ``{"detail": message}`` response, as FastAPI's own errors look."""
    body = json.dumps({"detail": message}, ensure_ascii=False).encode("utf-8")
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def waiting_events(blocks, concurrency_id: str | None = None) -> list:
    """The requests in ``blocks``' queue that have not started: all, or those of one concurrency group."""
    groups = blocks._queue.event_queue_per_concurrency_id
    if concurrency_id is not None:
        group = groups.get(concurrency_id)
        return list(group.queue) if group is not None else []
    return [event for group in list(groups.values()) for event in list(group.queue)]


def event_client(event) -> str:
    """The address key of the client that queued ``event``."""
    client = getattr(event.request, "client", None)
    return client_key(client.host if client is not None else None)


async def cancel_waiting(blocks, session_hash: str, message: str) -> int:
    """Take ``session_hash``'s waiting requests out of the queue, ending each with ``message``; return how many."""
    queue = blocks._queue
    cancelled = 0
    for event in waiting_events(blocks):
        if event.session_hash != session_hash:
            continue
        await queue.remove_from_queue(event._id)
        pending = queue.pending_messages_per_session.get(session_hash)
        if pending is not None:
            output = {"error": message, "visible": True, "title": None, "duration": None}
            pending.put_nowait(ProcessCompletedMessage(output=output, success=False, event_id=event._id))
        cancelled += 1
    return cancelled


# Gradio's simple API routes, which queue a call like /queue/join does.
CALL_ROUTE = re.compile(r"/call/(?:v2/)?([^/]+)/?$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _last_segment(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class PartCounter:
    """Counts multipart parts as the body streams past (the boundary may be split across chunks)."""

    def __init__(self, boundary: bytes):
        self.delimiter = b"\r\n--" + boundary
        self.tail = b"\r\n"  # the first delimiter is not preceded by a line break
        self.delimiters = 0

    def feed(self, chunk: bytes) -> int:
        """Add ``chunk``; return the number of parts begun so far."""
        data = self.tail + chunk
        self.delimiters += data.count(self.delimiter)
        self.tail = data[-(len(self.delimiter) - 1) :]
        return max(0, self.delimiters - 1) if self.delimiters else 0


class RequestGuard:
    """ASGI middleware: body bounds, login backoff and per-session queue caps (see the module docstring).

    ``blocks`` is the Gradio app whose queue is capped; ``max_waiting_per_session``
    and ``max_waiting_per_address`` (``None``: no cap) count the requests
    waiting in the new one's concurrency group (for chat: the model), the
    running one aside.
    """

    def __init__(
        self,
        app,
        *,
        blocks,
        body_limits: BodyLimits,
        throttle: LoginThrottle,
        max_waiting_per_session: int,
        max_waiting_per_address: int | None,
        messages: Any,
    ):
        self.app = app
        self.blocks = blocks
        self.body_limits = body_limits
        self.throttle = throttle
        self.max_waiting_per_session = max_waiting_per_session
        self.max_waiting_per_address = max_waiting_per_address
        self.messages = messages
        self._join_lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.handle(scope, receive, tracked_send)
        except RequestRefused as refused:
            if started:
                raise
            await respond(send, refused.status, refused.message, refused.headers)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        segment = _last_segment(scope["path"])
        upload = segment == "upload"
        limit = self.body_limits.upload_bytes if upload else self.body_limits.json_bytes
        length = _header(scope, b"content-length")
        if method in ("POST", "PUT", "PATCH"):
            if length is None:
                raise RequestRefused(411, self.messages.length_required)
        if length is not None:
            if not re.fullmatch(r"\d{1,18}", length.strip()):
                raise RequestRefused(400, self.messages.bad_length)
            if int(length) > limit:
                raise RequestRefused(413, self.messages.body_too_large.format(limit=_kib(limit)))
        receive = self.bounded(receive, limit, self.part_counter(scope) if upload else None)
        if method == "POST" and segment == "login":
            await self.login(scope, receive, send)
        elif method == "POST" and (
            scope["path"].rstrip("/").endswith("/queue/join") or CALL_ROUTE.search(scope["path"])
        ):
            await self.join(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def part_counter(self, scope: Scope) -> PartCounter | None:
        content_type = _header(scope, b"content-type") or ""
        match = re.search(r'boundary="?([^";]{1,200})"?', content_type)
        return PartCounter(match.group(1).encode("latin-1")) if match else None

    def bounded(self, receive: Receive, limit: int, parts: PartCounter | None) -> Receive:
        """``receive`` that refuses past ``limit`` bytes (or too many upload parts), however the body is framed."""
        seen = 0
        max_files = self.body_limits.upload_files

        async def guarded() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                seen += len(chunk)
                if seen > limit:
                    raise RequestRefused(413, self.messages.body_too_large.format(limit=_kib(limit)))
                if parts is not None and parts.feed(chunk) > max_files:
                    raise RequestRefused(413, self.messages.too_many_files.format(limit=max_files))
            return message

        return guarded

    async def login(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        key = client_key(client[0] if client else None)
        wait = self.throttle.wait_for(key)
        if wait > 0:
            seconds = math.ceil(wait)
            raise RequestRefused(429, self.messages.login_wait.format(seconds=seconds), {"Retry-After": str(seconds)})
        status = 500

        async def watch(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.throttle.finished(key, success=status == 200)
            if status != 200:
                logger.warning("failed login from %s", key)

    async def join(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None  # Gradio answers malformed bodies itself
        payload = payload if isinstance(payload, dict) else {}
        session_hash = payload.get("session_hash")
        fn_index = payload.get("fn_index")
        fn = self.blocks.fns.get(fn_index) if isinstance(fn_index, int) else None
        call = CALL_ROUTE.search(scope["path"])
        if call is not None:
            # Gradio's simple API (/call/<api_name>) joins the same queue; each call is its own session.
            fn = next((f for f in self.blocks.fns.values() if f.api_name == call.group(1)), None)
        # Only what waits in the queue is capped: Stop and the other light events must always get through.
        capped = fn is not None and fn.queue
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        client = scope.get("client")
        address = client_key(client[0] if client else None)
        # Held across check and push, so simultaneous joins from one session cannot all pass the check.
        async with self._join_lock:
            waiting = waiting_events(self.blocks, fn.concurrency_id) if capped else []
            if capped and isinstance(session_hash, str):
                mine = sum(event.session_hash == session_hash for event in waiting)
                if mine >= self.max_waiting_per_session:
                    raise RequestRefused(429, self.messages.session_queue_full.format(limit=mine))
            if capped and self.max_waiting_per_address is not None:
                theirs = sum(event_client(event) == address for event in waiting)
                if theirs >= self.max_waiting_per_address:
                    raise RequestRefused(429, self.messages.address_queue_full.format(limit=theirs))
            await self.app(scope, replay, send)


def _kib(size: int) -> str:
    return f"{math.ceil(size / 1024):,} KiB"
