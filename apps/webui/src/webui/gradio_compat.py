"""Every place the web UI reaches into Gradio beyond its documented API, in one module.

Gradio 6 (pinned in ``uv.lock``) offers no public way to list or cancel the
requests waiting in its queue, to tell whether a request carries a valid login
before its body is parsed, or to read a size such as ``"20mb"`` as ``launch``
does. These seams are kept here, each used by name from the rest of the
package; ``tests/webui/test_webui_gradio_compat.py`` fails loudly when a Gradio
release changes one of them.

Everything else uses public API: Gradio's route prefix and request model,
Starlette's path compilation.
"""

from __future__ import annotations

from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any

from gradio.data_classes import PredictBody
from gradio.route_utils import API_PREFIX
from gradio.server_messages import ProcessCompletedMessage
from gradio.utils import _parse_file_size, abspath, get_upload_folder, is_in_or_equal
from gradio_client.utils import is_file_obj_with_meta, traverse
from pydantic import ValidationError
from starlette.routing import compile_path

# The Gradio major version these seams were written for.
GRADIO_MAJOR = 6

# Gradio's routes the guard treats specially, as Gradio declares them (relative to the app's root path).
UPLOAD_ROUTE = f"{API_PREFIX}/upload"
QUEUE_JOIN_ROUTE = f"{API_PREFIX}/queue/join"
CALL_ROUTES = (f"{API_PREFIX}/call/{{api_name}}", f"{API_PREFIX}/call/v2/{{api_name}}")
LOGIN_ROUTE = "/login"
# Each with the spellings Gradio registers it under (some with a trailing slash too).
_ROUTE_SPELLINGS = {
    UPLOAD_ROUTE: (UPLOAD_ROUTE,),
    QUEUE_JOIN_ROUTE: (QUEUE_JOIN_ROUTE,),
    CALL_ROUTES[1]: (CALL_ROUTES[1], CALL_ROUTES[1] + "/"),
    CALL_ROUTES[0]: (CALL_ROUTES[0], CALL_ROUTES[0] + "/"),
    LOGIN_ROUTE: (LOGIN_ROUTE, LOGIN_ROUTE + "/"),
}
_ROUTE_PATTERNS = [
    (route, compile_path(spelling)[0]) for route, spellings in _ROUTE_SPELLINGS.items() for spelling in spellings
]


def parse_size(size: str | int) -> int:
    """A size as ``launch(max_file_size=...)`` reads it (``"20mb"``, ``"2gb"``, or bytes), in bytes."""
    parsed = _parse_file_size(size)
    if parsed is None:
        raise ValueError(f"not a size: {size!r}")
    return parsed


def app_path(scope: dict) -> str:
    """The request's path within the app: without the root path it is mounted or proxied under (as routing sees it)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def route_of(scope: dict) -> tuple[str, dict] | None:
    """Which of the routes above (its path template) the request goes to, and its path parameters; else ``None``."""
    path = app_path(scope)
    for route, pattern in _ROUTE_PATTERNS:
        match = pattern.match(path)
        if match is not None:
            return route, match.groupdict()
    return None


def auth_required(scope: dict) -> bool:
    """Whether the Gradio app serving ``scope`` asks for a login."""
    app = scope.get("app")
    return getattr(app, "auth", None) is not None or getattr(app, "auth_dependency", None) is not None


def logged_in(scope: dict, cookie_header: str | None) -> bool:
    """Whether ``cookie_header`` carries a session token the Gradio app serving ``scope`` issued at login."""
    app = scope.get("app")
    if not cookie_header or app is None:
        return False
    cookies = SimpleCookie()
    try:
        cookies.load(cookie_header)
    except CookieError:
        return False
    for name in (f"access-token-{app.cookie_id}", f"access-token-unsecure-{app.cookie_id}"):
        morsel = cookies.get(name)
        if morsel is not None and app.tokens.get(morsel.value) is not None:
            return True
    return False


def queued_fn_index(payload: Any) -> int | None:
    """The ``fn_index`` Gradio will run for a ``/queue/join`` body, read by Gradio's own request model.

    Gradio accepts ``"0"``, ``0.0``, ``true`` and other spellings of an integer; this is the integer it makes
    of them. ``None`` when the body has none, or is one Gradio refuses.
    """
    try:
        return PredictBody.model_validate(payload).fn_index
    except ValidationError:
        return None


def files_outside_uploads(payload: Any) -> list[str]:
    """The file references in a request body that Gradio will refuse as not uploaded (the names users gave).

    Gradio's own check (a file a request names must lie in the upload folder) answers with the full server path;
    knowing which files fail lets the guard answer with the file's name only.
    """
    folder = get_upload_folder()
    outside = []

    def check(file: dict) -> dict:
        path = file.get("path")
        if isinstance(path, str) and "://" not in path and not is_in_or_equal(abspath(path), folder):
            outside.append(Path(path).name or path)
        return file

    traverse(payload, check, is_file_obj_with_meta)
    return outside


def upload_forgetter(blocks) -> Callable[[str], None]:
    """What removes a deleted upload from ``blocks``' record of uploaded files (those its cache cleanup visits)."""
    return blocks.upload_file_set.discard


def waiting_events(blocks, concurrency_id: str | None = None) -> list:
    """The requests in ``blocks``' queue that have not started: all, or those of one concurrency group."""
    groups = blocks._queue.event_queue_per_concurrency_id
    if concurrency_id is not None:
        group = groups.get(concurrency_id)
        return list(group.queue) if group is not None else []
    return [event for group in list(groups.values()) for event in list(group.queue)]


async def end_waiting_event(blocks, event, message: str) -> None:
    """Take ``event`` out of ``blocks``' queue and end it for its session with the error ``message``."""
    queue = blocks._queue
    await queue.remove_from_queue(event._id)
    pending = queue.pending_messages_per_session.get(event.session_hash)
    if pending is not None:
        output = {"error": message, "visible": True, "title": None, "duration": None}
        pending.put_nowait(ProcessCompletedMessage(output=output, success=False, event_id=event._id))
