"""What the server checks before Gradio parses a request, and the queue bookkeeping Gradio lacks.

:class:`RequestGuard` is an ASGI middleware in front of the Gradio app. In order, it

* answers only to the host names the server is known by, and refuses a
  state-changing request sent by another web page (:class:`~webui.hosts.HostPolicy`);
* with a login required, refuses every request with a body except the login
  itself until the client has logged in, before a byte of the body is read;
* bounds every request body before it is parsed: Gradio's upload route by what
  one message may attach (files and their count, read from the multipart
  boundary as Gradio reads it), everything else by what the longest legitimate
  request (message plus system prompt) can take; a body without a declared
  length is refused, one over the bound gets a 413 with a message;
* bounds uploads per client per minute and keeps their files under a total
  budget (:mod:`webui.upload_quota`);
* slows failed logins per client (:class:`~webui.auth.LoginThrottle`);
* caps how many requests one session, and one client address, may have
  waiting in the queue for the same thing (the same concurrency group: the
  model, for chat and retry), so one user cannot fill it; what a page
  queues by itself when it opens (a component's value computed per page
  load) waits apart and does not count against a message;
* answers a call naming a file that was never uploaded with the file's name,
  not the server path Gradio's own refusal shows.

The client is the socket's peer, or what a proxy named with ``--trusted_proxy``
says it forwarded (uvicorn reads ``X-Forwarded-For`` from those alone).
:func:`cancel_waiting` takes a session's requests out of the queue (Stop).
Gradio internals are reached only through :mod:`webui.gradio_compat`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import Message
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from .auth import LoginThrottle, client_key
from .gradio_compat import (
    CALL_ROUTES,
    LOGIN_ROUTE,
    QUEUE_JOIN_ROUTE,
    UPLOAD_ROUTE,
    auth_required,
    end_waiting_event,
    files_outside_uploads,
    logged_in,
    parse_size,
    queued_fn_index,
    route_of,
    waiting_events,
)
from .hosts import HostPolicy
from .upload_quota import UploadRate, UploadStore

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

# Room for the JSON around a request's values: field names, session hash, event ids, numbers.
ENVELOPE_BYTES = 16 * 1024
# What one attached file's reference costs in a JSON request (path, URL, name, mime type, size).
FILE_REFERENCE_BYTES = 2 * 1024
# Worst-case JSON bytes per character of text: a character beyond the BMP (an emoji) escapes as a
# surrogate pair, \uXXXX\uXXXX (as json.dumps writes by default), and counts as one character.
JSON_BYTES_PER_CHAR = 12
# Per file part of a multipart upload: boundary and part headers.
PART_OVERHEAD_BYTES = 4 * 1024
# Methods whose request may change something, and so must not come from another page.
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class BodyLimits:
    """Largest request bodies accepted, in bytes, and how many files one upload may carry."""

    json_bytes: int
    upload_bytes: int
    upload_files: int

    @classmethod
    def from_limits(cls, limits) -> BodyLimits:
        """Size the bounds from the app's own :class:`~webui.app.Limits`."""
        file_bytes = parse_size(limits.max_file_size)
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


def event_client(event) -> str:
    """The address key of the client that queued ``event``."""
    client = getattr(event.request, "client", None)
    return client_key(client.host if client is not None else None)


async def cancel_waiting(blocks, session_hash: str, message: str) -> int:
    """Take ``session_hash``'s waiting requests out of the queue, ending each with ``message``; return how many."""
    cancelled = 0
    for event in waiting_events(blocks):
        if event.session_hash == session_hash:
            await end_waiting_event(blocks, event, message)
            cancelled += 1
    return cancelled


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


def upload_boundary(content_type: str | None) -> bytes | None:
    """The multipart boundary Gradio will split an upload on, or ``None`` unless exactly one is given.

    Read with the parser Gradio's own upload route uses, so the parts counted are the parts it stores; a header
    that names the parameter twice (in any spelling) is refused rather than guessed at.
    """
    if not content_type:
        return None
    header = Message()
    header["content-type"] = content_type
    named = [value for key, value in header.get_params(failobj=[])[1:] if key.lower() == "boundary"]
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or len(named) != 1 or not boundary or len(boundary) > 200:
        return None
    return boundary


class RequestGuard:
    """ASGI middleware: hosts and origins, login first, body bounds, upload quotas, login backoff, queue caps.

    See the module docstring. ``blocks`` is the Gradio app whose queue is
    capped; ``max_waiting_per_session`` and ``max_waiting_per_address``
    (``None``: no cap per address) count the requests waiting in the new one's
    concurrency group (for chat: the model), the running one aside.
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
        hosts: HostPolicy,
        upload_rate: UploadRate,
        upload_store: UploadStore,
    ):
        self.app = app
        self.blocks = blocks
        self.body_limits = body_limits
        self.throttle = throttle
        self.max_waiting_per_session = max_waiting_per_session
        self.max_waiting_per_address = max_waiting_per_address
        self.messages = messages
        self.hosts = hosts
        self.upload_rate = upload_rate
        self.upload_store = upload_store
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
        headers = Headers(scope=scope)
        host = headers.get("host")
        if not self.hosts.host_allowed(host):
            raise RequestRefused(421, self.messages.host_refused.format(host=host))
        origin = headers.get("origin")
        if method in STATE_CHANGING and not self.hosts.origin_allowed(origin, host):
            raise RequestRefused(403, self.messages.origin_refused.format(origin=origin))
        matched = route_of(scope)
        route, params = matched if matched is not None else ("", {})
        length = headers.get("content-length")
        has_body = method in STATE_CHANGING or length not in (None, "0")
        if has_body and route != LOGIN_ROUTE and auth_required(scope) and not logged_in(scope, headers.get("cookie")):
            raise RequestRefused(401, self.messages.login_required)
        upload = route == UPLOAD_ROUTE
        limit = self.body_limits.upload_bytes if upload else self.body_limits.json_bytes
        if method in ("POST", "PUT", "PATCH") and length is None:
            raise RequestRefused(411, self.messages.length_required)
        if length is not None:
            if not re.fullmatch(r"\d{1,18}", length.strip()):
                raise RequestRefused(400, self.messages.bad_length)
            if int(length) > limit:
                raise RequestRefused(413, self.messages.body_too_large.format(limit=_kib(limit)))
        parts = None
        if upload and method == "POST":
            boundary = upload_boundary(headers.get("content-type"))
            if boundary is None:
                raise RequestRefused(400, self.messages.bad_multipart)
            parts = PartCounter(boundary)
            self.charge_upload(scope, int(length))
            send = self.recording_upload(send, int(length))
        receive = self.bounded(receive, limit, parts)
        if method == "POST" and route == LOGIN_ROUTE:
            await self.login(scope, receive, send)
        elif method == "POST" and route == QUEUE_JOIN_ROUTE:
            await self.join(scope, receive, send, api_name=None)
        elif method == "POST" and route in CALL_ROUTES:
            await self.join(scope, receive, send, api_name=params.get("api_name"))
        else:
            await self.app(scope, receive, send)

    def charge_upload(self, scope: Scope, size: int) -> None:
        """Count an upload of ``size`` bytes against its client's rate, or refuse it with the wait."""
        wait = self.upload_rate.wait_for(self.client(scope), size)
        if wait > 0:
            seconds = math.ceil(wait)
            message = self.messages.upload_rate.format(limit=_kib(self.upload_rate.bytes_per_minute), seconds=seconds)
            raise RequestRefused(429, message, {"Retry-After": str(seconds)})

    def recording_upload(self, send: Send, size: int) -> Send:
        """``send`` that records the files a successful upload stored in the upload store."""
        status = 500
        body = b""

        async def recording(message: dict) -> None:
            nonlocal status, body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status == 200:
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    try:
                        paths = json.loads(body)
                    except ValueError:
                        paths = []
                    if isinstance(paths, list):
                        self.upload_store.add([path for path in paths if isinstance(path, str)], size)
            await send(message)

        return recording

    @staticmethod
    def client(scope: Scope) -> str:
        """The key of the request's client address (the socket peer, or what a trusted proxy forwarded)."""
        client = scope.get("client")
        return client_key(client[0] if client else None)

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
        key = self.client(scope)
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

    async def join(self, scope: Scope, receive: Receive, send: Send, *, api_name: str | None) -> None:
        """A queued call (``/queue/join``, or the simple API's ``/call/<api_name>``): checked, capped, passed on."""
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
        not_uploaded = files_outside_uploads(payload)
        if not_uploaded:
            raise RequestRefused(400, self.messages.file_not_uploaded.format(name=not_uploaded[0]))
        session_hash = payload.get("session_hash")
        if api_name is None:
            fn_index = queued_fn_index(payload)  # as Gradio reads it: "0", 0.0 and true are indexes too
            fn = self.blocks.fns.get(fn_index) if fn_index is not None else None
        else:
            # Gradio's simple API joins the same queue; each call is its own session.
            fn = next((f for f in self.blocks.fns.values() if f.api_name == api_name), None)
        # Only what waits in the queue is capped: Stop and the other light events must always get through.
        capped = fn is not None and fn.queue
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        address = self.client(scope)
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
