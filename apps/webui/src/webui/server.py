"""Launching the UI safely: loopback by default, no share, optional auth, bounded requests.

:func:`~webui.auth.check_exposure` refuses to serve beyond this machine (a
non-loopback address, or a Gradio share link) without a password unless the
operator says so explicitly. :func:`serve` launches with settings that keep the
machine's files private: nothing is served but the app's own assets and what
users upload, and the model directory is blocked outright. Every request passes
:class:`~webui.guard.RequestGuard` first (hosts and origins, login first, body
bounds, upload quotas, login backoff, queue caps). A client is the socket's
peer: ``X-Forwarded-For`` counts only from the proxies the operator names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from .app import Limits
from .auth import LoginThrottle, check_exposure, parse_auth, password_checker
from .gradio_compat import parse_size, upload_forgetter
from .guard import BodyLimits, RequestGuard
from .hosts import HostPolicy, parse_proxy
from .labels import labels_for
from .upload_quota import UploadRate, UploadStore

# uvicorn reads the proxies whose X-Forwarded-For it believes from here when Gradio creates its server
# (Gradio passes no such setting through); left unset it believes any proxy on loopback.
FORWARDED_ALLOW_IPS = "FORWARDED_ALLOW_IPS"


@contextlib.contextmanager
def trusting_only(proxies: Sequence[str]) -> Iterator[None]:
    """Within the block, a server created by Gradio believes ``X-Forwarded-For`` from ``proxies`` alone.

    Set for the launch only (uvicorn reads it once, as the server is configured), then restored.
    """
    before = os.environ.get(FORWARDED_ALLOW_IPS)
    os.environ[FORWARDED_ALLOW_IPS] = ",".join(parse_proxy(proxy) for proxy in proxies)
    try:
        yield
    finally:
        if before is None:
            del os.environ[FORWARDED_ALLOW_IPS]
        else:
            os.environ[FORWARDED_ALLOW_IPS] = before


def serve(
    app: gr.Blocks,
    *,
    limits: Limits | None = None,
    server_name: str = "127.0.0.1",
    server_port: int | None = None,
    share: bool = False,
    auth: tuple[str, str] | None = None,
    allow_unauthenticated_public: bool = False,
    blocked_paths: Sequence[str | PathLike] = (),
    lang: str = "en",
    login_throttle: LoginThrottle | None = None,
    trusted_proxies: Sequence[str] = (),
    allowed_hosts: Sequence[str] = (),
    prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Check the exposure and the credentials, then launch ``app``; returns what ``gr.Blocks.launch`` returns.

    ``blocked_paths`` (e.g. the model directory) can never be read through
    Gradio's file routes, whatever else is configured. ``lang`` is the language
    of the guard's refusals; ``login_throttle`` defaults to :class:`~webui.auth.LoginThrottle`'s.
    ``trusted_proxies`` (addresses or networks) are the reverse proxies whose
    ``X-Forwarded-For`` names the client (default: none; the socket's peer is the
    client). ``allowed_hosts`` are the names, besides ``server_name`` and
    localhost, that requests may be addressed to.
    """
    limits = limits or Limits()
    check_exposure(server_name, share=share, auth=auth, allow_unauthenticated_public=allow_unauthenticated_public)
    checker = None
    if auth is not None:
        user, password = parse_auth(f"{auth[0]}:{auth[1]}", source="auth")  # the same rules however they came
        checker = password_checker(user, password)
    body_limits = BodyLimits.from_limits(limits)
    upload_rate, upload_storage = parse_size(limits.upload_rate), parse_size(limits.upload_storage)
    if min(upload_rate, upload_storage) < body_limits.upload_bytes:
        raise ValueError(
            f"the upload rate ({limits.upload_rate}) and storage ({limits.upload_storage}) must each hold at least "
            f"one message's uploads ({body_limits.upload_bytes:,} bytes: {limits.max_images_per_message} files of "
            f"{limits.max_file_size})"
        )
    guard = Middleware(
        RequestGuard,
        blocks=app,
        body_limits=body_limits,
        throttle=login_throttle or LoginThrottle(),
        max_waiting_per_session=limits.max_waiting_per_session,
        max_waiting_per_address=limits.max_waiting_per_address,
        messages=labels_for(lang),
        hosts=HostPolicy.build(server_name, allowed_hosts, share=share),
        upload_rate=UploadRate(upload_rate),
        upload_store=UploadStore(upload_storage, forget=upload_forgetter(app)),
    )
    with trusting_only(trusted_proxies):
        return app.launch(
            server_name=server_name,
            server_port=server_port,
            share=share,
            auth=checker,
            app_kwargs={"middleware": [guard]},
            max_file_size=limits.max_file_size,
            state_session_capacity=limits.max_sessions,
            blocked_paths=[str(Path(path).resolve()) for path in blocked_paths] or None,
            # Every handler failure is already a gr.Error without internals (app.reported); what remains is
            # Gradio refusing malformed input before a handler runs, whose message API callers need to see.
            show_error=True,
            enable_monitoring=False,
            mcp_server=False,
            ssr_mode=False,
            run_history=False,  # conversations are not kept in the browser's storage
            footer_links=["api"],
            prevent_thread_lock=prevent_thread_lock,
            quiet=quiet,
        )
