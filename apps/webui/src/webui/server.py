"""Launching the UI safely: loopback by default, no share, optional auth, bounded requests.

:func:`~webui.auth.check_exposure` refuses to serve beyond this machine (a
non-loopback address, or a Gradio share link) without a password unless the
operator says so explicitly. :func:`serve` launches with settings that keep the
machine's files private: nothing is served but the app's own assets and what
users upload, and the model directory is blocked outright. Every request passes
:class:`~webui.guard.RequestGuard` first (body bounds, login backoff, queue caps).
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from .app import Limits
from .auth import LoginThrottle, check_exposure, parse_auth, password_checker
from .guard import BodyLimits, RequestGuard
from .labels import labels_for


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
    prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Check the exposure and the credentials, then launch ``app``; returns what ``gr.Blocks.launch`` returns.

    ``blocked_paths`` (e.g. the model directory) can never be read through
    Gradio's file routes, whatever else is configured. ``lang`` is the language
    of the guard's refusals; ``login_throttle`` defaults to :class:`~webui.auth.LoginThrottle`'s.
    """
    limits = limits or Limits()
    check_exposure(server_name, share=share, auth=auth, allow_unauthenticated_public=allow_unauthenticated_public)
    checker = None
    if auth is not None:
        user, password = parse_auth(f"{auth[0]}:{auth[1]}", source="auth")  # the same rules however they came
        checker = password_checker(user, password)
    guard = Middleware(
        RequestGuard,
        blocks=app,
        body_limits=BodyLimits.from_limits(limits),
        throttle=login_throttle or LoginThrottle(),
        max_waiting_per_session=limits.max_waiting_per_session,
        max_waiting_per_address=limits.max_waiting_per_address,
        messages=labels_for(lang),
    )
    return app.launch(
        server_name=server_name,
        server_port=server_port,
        share=share,
        auth=checker,
        app_kwargs={"middleware": [guard]},
        max_file_size=limits.max_file_size,
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
