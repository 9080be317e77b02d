"""A limit on the size of a request body, which vLLM's server does not have.

vLLM reads any body whole, base64 images included (an 8000x8000 noise PNG is
a 256 MB request), before looking at it. :class:`RequestBodyLimit` answers
``413`` to a larger body than ``YUREN_VLLM_MAX_REQUEST_MB`` (default 32 MiB:
several phone photos as ``data:`` URLs) as soon as its ``Content-Length`` or
the bytes received so far pass the limit. ``yuren-vllm serve`` installs it;
with plain ``vllm serve`` pass ``--middleware yuren_vllm.request_limit.RequestBodyLimit``.
"""

from __future__ import annotations

import json
import os

MIDDLEWARE = "yuren_vllm.request_limit.RequestBodyLimit"
ENV = "YUREN_VLLM_MAX_REQUEST_MB"
DEFAULT_MB = 32


def max_request_bytes(environ=os.environ) -> int:
    """The limit in bytes: ``YUREN_VLLM_MAX_REQUEST_MB`` (a positive number of MiB) or the default."""
    value = environ.get(ENV, "") or str(DEFAULT_MB)
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = 0
    if megabytes <= 0:
        raise ValueError(f"{ENV}={value!r}: expected a positive number of MiB, e.g. {ENV}={DEFAULT_MB}")
    return int(megabytes * (1 << 20))


class RequestBodyLimit:
    """ASGI middleware: HTTP requests whose body exceeds :func:`max_request_bytes` get ``413``, unread."""

    def __init__(self, app) -> None:
        self.app = app
        self.limit = max_request_bytes()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        # Without a (truthful) Content-Length the body is read here, up to the limit, and then handed on whole.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        pending = iter(messages)

        async def replay():
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        megabytes = self.limit / (1 << 20)
        message = (
            f"The request body is larger than this server accepts ({megabytes:g} MiB). Send smaller images, "
            f"or ask the operator to raise {ENV}."
        )
        body = json.dumps(
            {"error": {"message": message, "type": "RequestEntityTooLarge", "param": None, "code": 413}}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
