"""Upload checks: what gets decoded, and the clean refusals for everything else."""

import pytest
from PIL import Image

from webui.uploads import ImageRejected, open_upload

LIMIT = 40_000_000


def stripes() -> Image.Image:
    """48 x 32 pixels in three colour bands: few colours, so even GIF's palette keeps them exactly."""
    image = Image.new("RGB", (48, 32), (220, 20, 20))
    image.paste((20, 200, 40), (16, 0, 32, 32))
    image.paste((30, 40, 230), (32, 0, 48, 32))
    return image


@pytest.mark.parametrize(
    "extension, options, lossless",
    [
        ("png", {}, True),
        ("jpg", {"quality": 90}, False),
        ("webp", {"lossless": True}, True),
        ("webp", {"quality": 80}, False),
        ("gif", {}, True),
        ("bmp", {}, True),
    ],
    ids=["png", "jpeg", "webp-lossless", "webp-lossy", "gif", "bmp"],
)
def test_good_images_open_decoded(tmp_path, extension, options, lossless):
    path = tmp_path / f"upload.{extension}"
    stripes().save(path, **options)
    image = open_upload(path, max_pixels=LIMIT)
    with Image.open(path) as reference:
        expected = reference.convert("RGB")
    assert image.size == (48, 32)
    assert image.convert("RGB").tobytes() == expected.tobytes()
    if lossless:
        assert image.convert("RGB").tobytes() == stripes().tobytes()


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("bomb_png", "far_too_large"),
        ("truncated_jpeg", "unreadable"),
        ("tiff", "format"),
        ("not_an_image", "unreadable"),
    ],
)
def test_bad_uploads_are_rejected_with_a_reason(images, kind, reason):
    with pytest.raises(ImageRejected) as rejected:
        open_upload(images[kind], max_pixels=LIMIT)
    assert rejected.value.reason == reason
    assert rejected.value.name == images[kind].name


def test_pixel_limit_is_checked_before_decoding(images):
    # 48x32 = 1536 pixels: over a limit of 1000, refused from the header with its size.
    with pytest.raises(ImageRejected) as rejected:
        open_upload(images["png"], max_pixels=1000)
    assert rejected.value.reason == "too_large"
    assert rejected.value.details == {"width": 48, "height": 32, "limit": 1000}
