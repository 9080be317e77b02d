"""Web UI fixtures: a scriptable fake backend, the real backend over the tiny models, image files."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image


class FakeBackend:
    """A :class:`webui.backend.ChatBackend` that echoes, records its calls, and can be made slow or failing.

    ``gate``: every stream waits for it before answering. ``fail``: an exception
    (or a list consumed one per call, ``None`` meaning succeed) raised after the
    first piece. ``delay``: seconds between pieces.
    """

    def __init__(self, *, words: int = 5, delay: float = 0.0, gate: threading.Event | None = None, fail=None):
        self.words = words
        self.delay = delay
        self.gate = gate
        self.fail = fail
        self.calls: list[dict] = []
        self.context_length = 4096
        self.supports_images = True
        self.image_position = "before_text"

    def prepare_image(self, image):
        return f"image{image.size[0]}x{image.size[1]}"

    def unreachable_turns(self, messages, images):
        """Turns beyond ``max_turns`` (the newest kept) never fit; without it everything does."""
        max_turns = getattr(self, "max_turns", None)
        turns = sum(message["role"] == "user" for message in messages)
        return max(0, turns - max_turns) if max_turns else 0

    def stream(self, messages, images, params, stop_event):
        call = {"messages": messages, "images": list(images), "params": params, "pieces": 0, "stopped": False}
        call["stop_event"] = stop_event
        self.calls.append(call)
        if self.gate is not None:
            self.gate.wait(timeout=30)
        failure = self.fail.pop(0) if isinstance(self.fail, list) else self.fail
        text = "".join(part.get("text", "") for part in messages[-1]["content"]).strip()
        pieces = [f"echo#{len(self.calls)}:", text, f"[{len(images)} images]"] + ["word"] * self.words
        for i, piece in enumerate(pieces):
            if stop_event.is_set():
                call["stopped"] = True
                return
            if i == 1 and failure is not None:
                raise failure
            time.sleep(self.delay)
            call["pieces"] += 1
            yield piece + " "


@pytest.fixture
def fake_backend():
    return FakeBackend


@pytest.fixture(scope="session")
def text_model(prepared_base):
    """The tiny text-only LLaMA (no vision tower) and its tokenizer."""
    from transformers import AutoModelForCausalLM

    from yuren_core.vocab import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(prepared_base).eval(), load_tokenizer(str(prepared_base))


@pytest.fixture(scope="session")
def fused(fused_model_dir):
    """The tiny fused image + text model loaded for serving: (model, tokenizer, image_processor)."""
    from yuren_core.loading import load_model

    return load_model(fused_model_dir)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no pixel data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    """Upload candidates: good PNG and JPEG, a 20000x20000 bomb, a truncated JPEG, a TIFF, text named .png."""
    out = {}
    out["png"] = tmp_path / "red.png"
    Image.new("RGB", (48, 32), (220, 20, 20)).save(out["png"])
    noise = Image.effect_noise((256, 256), 80).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, "JPEG", quality=90)
    out["jpeg"] = tmp_path / "noise.jpg"
    out["jpeg"].write_bytes(buffer.getvalue())
    out["truncated_jpeg"] = tmp_path / "truncated.jpg"
    out["truncated_jpeg"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    out["bomb_png"] = tmp_path / "bomb.png"
    out["bomb_png"].write_bytes(png_header_only(20000, 20000))
    out["tiff"] = tmp_path / "scan.tiff"
    Image.new("RGB", (16, 16)).save(out["tiff"])
    out["not_an_image"] = tmp_path / "notes.png"
    out["not_an_image"].write_text("just text")
    return out
