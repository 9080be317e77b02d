"""Opening untrusted images within a pixel limit, with Pillow alone.

The size is read from an image's header before any pixel is decoded, so a
decompression bomb (a small file that decodes to gigabytes) is refused
without the memory it would take. Torch-free, so code that only checks
uploads (the web UI over a remote server) need not load torch.
"""

from __future__ import annotations

import io
from os import PathLike
from typing import BinaryIO

from PIL import Image

# 8000 x 8000: far above any photo the tower could use (it sees 224 x 224), far below
# what a decompression bomb expands to. Pillow's own guard only warns below 2x its limit.
DEFAULT_MAX_PIXELS = 64_000_000


ImageSource = Image.Image | str | PathLike | bytes | BinaryIO


class ImageTooLargeError(ValueError):
    """An image has more pixels than the processor accepts (likely a decompression bomb)."""


def open_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image from a path, bytes or file object (or pass a PIL image through), checking its size first.

    The size is read from the header before any pixel is decoded, so an
    oversized image is rejected without the memory it would take.
    """
    if isinstance(source, Image.Image):
        check_pixel_limit(source, max_pixels)
        return source
    name = str(source) if isinstance(source, (str, PathLike)) else "the uploaded image"
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        image = Image.open(stream)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"{name} is too large to process: {error}") from error
    check_pixel_limit(image, max_pixels, name=name)
    image.load()
    return image


def check_pixel_limit(image: Image.Image, max_pixels: int, *, name: str = "the image") -> None:
    """Raise :class:`ImageTooLargeError` if ``image`` has more than ``max_pixels`` pixels."""
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"{name} is {image.width}x{image.height} = {pixels:,} pixels, more than the limit of {max_pixels:,}; "
            "downscale it first (or raise max_pixels if you trust the source)"
        )
