"""What tests in every folder share: where the repository and its data are, and a free port to listen on."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from make_tiny_model.sample_data import SAMPLE_CONVERSATIONS

REPO = Path(__file__).resolve().parents[1]
# The project's own sample conversations, shipped as the make-tiny-model package's data (a file on disk here).
PROJECT_DATA = Path(str(SAMPLE_CONVERSATIONS))
# Upstream's 300-conversation sample; present on developer and CI machines, never committed.
UPSTREAM_SAMPLE = REPO.parent / "shared" / "data" / "sft.dev.json"


def load_sharegpt(path: Path) -> list[dict]:
    """Records of a ShareGPT JSON list, without the ``__comment__`` record."""
    return [r for r in json.loads(path.read_text(encoding="utf-8")) if "__comment__" not in r]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
