"""Upload checks: what gets decoded, and the clean refusals for everything else."""

import pytest

from webui.uploads import ImageRejected, open_upload

LIMIT = 40_000_000


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_good_images_open_decoded(images, kind):
    image = open_upload(images[kind], max_pixels=LIMIT)
    assert image.size[0] > 0 and image.getpixel((0, 0)) is not None


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
