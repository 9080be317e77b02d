"""Checking uploaded images before any pixel reaches the model.

Uploads are untrusted: a 20000x20000 PNG compresses to a few hundred kB and
decodes to over a gigabyte, a truncated JPEG fails half-way through decoding,
and a file named ``.png`` can be anything. :func:`open_upload` reads the header
first (format and size), rejects what it must, and only then decodes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from yuren_core.images import ImageTooLargeError, check_pixel_limit

logger = logging.getLogger(__name__)

# Pillow format names of what users upload from phones, cameras, browsers and screenshots.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
ACCEPTED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


class ImageRejected(ValueError):
    """An upload that cannot be used.

    ``reason`` is ``too_large`` (details: width, height, limit), ``far_too_large``
    (so large Pillow would not even report its size; details: limit),
    ``aspect`` (one side more than ``limit`` times the other; details: width,
    height, limit), ``unreadable`` or ``format`` (details: format, accepted).
    """

    def __init__(self, reason: str, name: str, **details):
        self.reason = reason
        self.name = name
        self.details = details
        super().__init__(f"{name}: {reason} {details}")


def open_upload(
    path: str | PathLike,
    *,
    max_pixels: int,
    max_aspect_ratio: float | None = None,
    formats: Sequence[str] = ACCEPTED_FORMATS,
) -> Image.Image:
    """Open and fully decode the uploaded image at ``path``, or raise :class:`ImageRejected`.

    The format, pixel count and aspect ratio come from the header, checked
    before decoding.
    """
    name = Path(path).name
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as error:
        # Pillow refuses past twice its own limit, before telling us the size.
        raise ImageRejected("far_too_large", name, limit=max_pixels) from error
    except (UnidentifiedImageError, OSError) as error:
        raise ImageRejected("unreadable", name) from error
    with image:
        if image.format not in formats:
            raise ImageRejected("format", name, format=image.format, accepted="/".join(formats))
        try:
            check_pixel_limit(image, max_pixels, name=name)
        except ImageTooLargeError as error:
            raise ImageRejected("too_large", name, width=image.width, height=image.height, limit=max_pixels) from error
        if max_aspect_ratio is not None and max(image.size) > max_aspect_ratio * min(image.size):
            raise ImageRejected("aspect", name, width=image.width, height=image.height, limit=max_aspect_ratio)
        try:
            image.load()
        except Exception as error:  # Pillow raises many types on corrupt data; all mean "unreadable"
            logger.info("could not decode upload %s: %s", name, error)
            raise ImageRejected("unreadable", name) from error
        # Detach the pixels from the file handle the with-block closes.
        return image.copy()
