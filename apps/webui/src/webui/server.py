"""Launching the UI safely: loopback by default, no share, optional auth, bounded uploads.

:func:`check_exposure` refuses to serve beyond this machine (a non-loopback
address, or a Gradio share link) without a password unless the operator says
so explicitly. :func:`serve` launches with settings that keep the machine's
files private: nothing is served but the app's own assets and what users
upload, and the model directory is blocked outright.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import gradio as gr

from .app import Limits


class ExposureRefused(RuntimeError):
    """Serving beyond localhost without authentication, and the operator did not insist."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        # A host name may resolve to any interface: treat it as public.
        return False


def check_exposure(
    server_name: str,
    *,
    share: bool,
    auth: tuple[str, str] | None,
    allow_unauthenticated_public: bool = False,
) -> None:
    """Raise :class:`ExposureRefused` when the server would be reachable by others without a password."""
    if auth is not None or allow_unauthenticated_public:
        return
    if share:
        raise ExposureRefused(
            "--share True publishes the UI on a public gradio.live link; protect it with --auth USER:PASS "
            "(or pass --allow-unauthenticated-public to serve it to anyone)"
        )
    if not is_loopback(server_name):
        raise ExposureRefused(
            f"--server_name {server_name} makes the UI reachable from other machines; protect it with "
            "--auth USER:PASS (or pass --allow-unauthenticated-public to serve it to anyone on the network)"
        )


def parse_auth(value: str) -> tuple[str, str]:
    """``user:pass`` -> ``(user, pass)``; the password may itself contain colons."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError(f"expected USER:PASS with both parts non-empty, got {value!r}")
    return user, password


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
    prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Check the exposure, then launch ``app``; returns what ``gr.Blocks.launch`` returns.

    ``blocked_paths`` (e.g. the model directory) can never be read through
    Gradio's file routes, whatever else is configured.
    """
    limits = limits or Limits()
    check_exposure(server_name, share=share, auth=auth, allow_unauthenticated_public=allow_unauthenticated_public)
    return app.launch(
        server_name=server_name,
        server_port=server_port,
        share=share,
        auth=auth,
        max_file_size=limits.max_file_size,
        blocked_paths=[str(Path(path).resolve()) for path in blocked_paths] or None,
        show_error=False,  # gr.Error messages still reach users; tracebacks and internals do not
        enable_monitoring=False,
        mcp_server=False,
        ssr_mode=False,
        run_history=False,  # conversations are not kept in the browser's storage
        footer_links=["api"],
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
    )
