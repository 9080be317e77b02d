"""How much one client may upload, and how much all uploads together may keep on disk.

Gradio stores every upload and deletes it only by age (``delete_cache``), so
one client could fill the disk in minutes. :class:`UploadRate` bounds the bytes
each client address may send per minute; :class:`UploadStore` keeps the files
uploads left on disk under a total budget, deleting the oldest first.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

RATE_WINDOW_SECONDS = 60.0


class UploadRate:
    """At most ``bytes_per_minute`` uploaded per client over any minute; records for ``max_clients`` clients."""

    def __init__(
        self, bytes_per_minute: int, *, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic
    ):
        self.bytes_per_minute = bytes_per_minute
        self.max_clients = max_clients
        self.clock = clock
        self._sent: OrderedDict[str, deque[tuple[float, int]]] = OrderedDict()

    def wait_for(self, key: str, size: int) -> float:
        """Seconds ``key`` must wait before it may upload ``size`` more bytes (0: allowed now, and counted)."""
        now = self.clock()
        sent = self._sent.setdefault(key, deque())
        self._sent.move_to_end(key)
        while len(self._sent) > self.max_clients:
            self._sent.popitem(last=False)
        while sent and sent[0][0] <= now - RATE_WINDOW_SECONDS:
            sent.popleft()
        total = sum(size for _, size in sent)
        if total + size <= self.bytes_per_minute:
            sent.append((now, size))
            return 0.0
        # The wait until enough of the window has expired for this upload to fit.
        for at, earlier in sent:
            total -= earlier
            if total + size <= self.bytes_per_minute:
                return max(at + RATE_WINDOW_SECONDS - now, 0.001)
        return RATE_WINDOW_SECONDS  # larger than a minute's allowance on its own: never fits


class UploadStore:
    """The files uploads stored, oldest first, kept under ``budget_bytes`` in all.

    Each upload is charged its request's size (its files can be no larger).
    :meth:`add` deletes the oldest uploads' files until the total fits; ``forget``
    is told each deleted path (Gradio's record of uploaded files).
    """

    def __init__(self, budget_bytes: int, *, forget: Callable[[str], None] = lambda path: None):
        self.budget_bytes = budget_bytes
        self.forget = forget
        self._uploads: deque[tuple[tuple[str, ...], int]] = deque()
        self.total_bytes = 0

    def add(self, paths: Iterable[str], size: int) -> None:
        """Record an upload of ``size`` bytes that stored ``paths``; delete the oldest uploads past the budget."""
        self._uploads.append((tuple(paths), size))
        self.total_bytes += size
        while self.total_bytes > self.budget_bytes and len(self._uploads) > 1:
            old_paths, old_size = self._uploads.popleft()
            self.total_bytes -= old_size
            for path in old_paths:
                self._delete(path)

    def _delete(self, path: str) -> None:
        file = Path(path)
        try:
            file.unlink(missing_ok=True)
            file.parent.rmdir()  # Gradio keeps each upload in a directory of its own; gone once empty
        except OSError:
            pass  # a directory still holding another file stays
        self.forget(path)
        logger.info("upload storage budget: deleted the oldest upload %s", file.name)
