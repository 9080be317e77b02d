"""Image preprocessing: RGB conversion, EXIF orientation, pixel limit, square padding, open_clip transform."""

import io

import open_clip
import pytest
import torch
from PIL import Image

from yuren_core.images import ImageTooLargeError, open_image
from yuren_core.vision import ImageProcessor, load_open_clip_vision, num_patches

SIZE = 32
MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture
def processor():
    return ImageProcessor({"size": SIZE, "mean": MEAN.flatten().tolist(), "std": STD.flatten().tolist()})


def expected(rgb, height=SIZE, width=SIZE):
    """The normalised tensor of a uniform image of colour ``rgb``."""
    colour = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255
    return ((colour - MEAN) / STD).expand(3, height, width)


def png_bytes(image, **save_args):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def test_rgb_image_is_normalised_with_the_open_clip_config(processor):
    pixels = processor(Image.new("RGB", (SIZE, SIZE), RED))
    assert pixels.shape == (1, 3, SIZE, SIZE) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[0], expected(RED))


def test_palette_image_becomes_its_colours(processor):
    image = Image.new("P", (SIZE, SIZE), 1)
    image.putpalette([0, 0, 0, *BLUE] + [0] * 762)
    torch.testing.assert_close(processor(image)[0], expected(BLUE))


def test_palette_transparency_keeps_the_palette_colour(processor):
    image = Image.new("P", (SIZE, SIZE), 0)
    image.putpalette([*RED, *BLUE] + [0] * 762)
    image.paste(1, (0, 0, SIZE, SIZE // 2))  # top half blue, bottom half red
    image.info["transparency"] = 1  # ...and blue is the transparent colour key, which convert("RGB") ignores
    pixels = processor(Image.open(io.BytesIO(png_bytes(image))))[0]
    torch.testing.assert_close(pixels[:, :8], expected(BLUE, 8))
    torch.testing.assert_close(pixels[:, -8:], expected(RED, 8))


@pytest.mark.parametrize(
    ("mode", "value", "rgb"),
    [
        # Alpha is dropped, as the towers' reference preprocessing drops it: the colour under it stays.
        ("RGBA", (0, 0, 255, 0), BLUE),
        ("RGBA", (0, 0, 255, 255), BLUE),
        ("RGBA", (0, 0, 0, 128), (0, 0, 0)),
        ("LA", (0, 0), (0, 0, 0)),
        ("L", 200, (200, 200, 200)),
        ("1", 1, WHITE),
        ("I;16", 40000, (155, 155, 155)),  # the full 16-bit range scaled to 8 bits, not clipped to 255
        ("CMYK", (0, 255, 255, 0), RED),
    ],
)
def test_modes_convert_to_rgb(processor, mode, value, rgb):
    pixels = processor(Image.new(mode, (SIZE, SIZE), value))
    assert pixels.shape == (1, 3, SIZE, SIZE)
    torch.testing.assert_close(pixels[0], expected(rgb), atol=0.02, rtol=0)


def half_transparent(width, height):
    """Noise whose alpha runs from transparent to opaque: every pixel hides a colour under partial alpha."""
    image = noise(width, height).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").rotate(90).resize((width, height)))
    return image


def test_half_transparent_pixels_equal_open_clips_own_preprocessing(tiny_clip_id):
    """The tower's reference pipeline is open_clip's transform: resize and crop with alpha, then convert("RGB")."""
    _, _, reference = open_clip.create_model_and_transforms(tiny_clip_id)
    ours = ImageProcessor(load_open_clip_vision(tiny_clip_id).preprocess_config)
    image = half_transparent(64, 48)
    assert len(set(image.getchannel("A").getdata())) > 50
    assert torch.equal(ours(image)[0], reference(image))


def test_half_transparent_pixels_are_what_upstreams_processor_was_given(release_clip_dir):
    """transformers 4.30's CLIPImageProcessor (the release's) converted with convert("RGB") before resizing."""
    from yuren_core.transformers_clip import preprocess_config_of

    ours = ImageProcessor(preprocess_config_of(str(release_clip_dir), source="test"))
    image = half_transparent(64, 48)
    assert torch.equal(ours(image), ours(image.convert("RGB")))


def half_red_half_blue(width, height):
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def test_exif_orientation_is_applied(processor):
    stored = half_red_half_blue(2 * SIZE, SIZE)
    exif = stored.getexif()
    exif[0x0112] = 6  # Orientation: the camera was turned; display rotated 90 degrees clockwise
    upright = processor(png_bytes(stored, exif=exif))[0]
    # Displayed upright the image is tall, red on top: resized and centre-cropped, top rows red.
    torch.testing.assert_close(upright[:, : SIZE // 2], expected(RED, SIZE // 2), atol=0.02, rtol=0)
    torch.testing.assert_close(upright[:, SIZE // 2 + 1 :], expected(BLUE, SIZE // 2 - 1), atol=0.02, rtol=0)
    # Without the tag the same pixels are read side by side.
    sideways = processor(png_bytes(stored))[0]
    torch.testing.assert_close(sideways[:, :, : SIZE // 2], expected(RED, SIZE, SIZE // 2), atol=0.02, rtol=0)


def test_pad_to_square_keeps_the_whole_image():
    config = {"size": SIZE, "mean": MEAN.flatten().tolist(), "std": STD.flatten().tolist()}
    wide = Image.new("RGB", (2 * SIZE, SIZE), RED)
    padded = ImageProcessor(config, pad_to_square=True)(wide)[0]
    # Bands above and below in the normalisation mean colour (~0 after normalising), the image in the middle.
    # (Bicubic resampling blends a few rows at each edge of the image.)
    assert padded[:, :4].abs().max() < 0.02 and padded[:, -4:].abs().max() < 0.02
    torch.testing.assert_close(padded[:, SIZE // 4 + 2 : -(SIZE // 4 + 2)], expected(RED, SIZE // 2 - 4))
    # Without padding the centre crop fills the frame with the image.
    torch.testing.assert_close(ImageProcessor(config)(wide)[0], expected(RED))


def test_batch_of_sources_stacks(processor, tmp_path):
    path = tmp_path / "blue.png"
    Image.new("RGB", (SIZE * 3, SIZE * 2), BLUE).save(path)
    sources = [Image.new("L", (10, 50), 0), str(path), path.read_bytes(), io.BytesIO(path.read_bytes())]
    pixels = processor(sources)
    assert pixels.shape == (4, 3, SIZE, SIZE)
    for row in pixels[1:]:
        torch.testing.assert_close(row, expected(BLUE))
    assert processor([]).shape == (0, 3, SIZE, SIZE)


def test_pixel_limit_raises_before_decoding():
    config = {"size": SIZE}
    image = Image.new("RGB", (100, 100), RED)
    with pytest.raises(ImageTooLargeError, match=r"100x100 = 10,000 pixels.*limit of 9,999"):
        ImageProcessor(config, max_pixels=9_999)(image)
    assert ImageProcessor(config, max_pixels=10_000)(image).shape == (1, 3, SIZE, SIZE)
    # A truncated file still has its header: the size check fires instead of a decoding error.
    header_only = png_bytes(image)[:60]
    with pytest.raises(ImageTooLargeError):
        open_image(header_only, max_pixels=9_999)
    with pytest.raises(OSError):
        open_image(header_only, max_pixels=10_000)


def test_vision_tower_from_local_dir(tiny_clip_id):
    tower = load_open_clip_vision(tiny_clip_id)
    reference = open_clip.create_model(tiny_clip_id).visual.state_dict()
    assert tower.module.state_dict().keys() == reference.keys()
    assert all(torch.equal(tower.module.state_dict()[k], v) for k, v in reference.items())
    assert "text_cfg" not in tower.open_clip_config
    assert num_patches(tower.open_clip_config) == 16
    assert tower.preprocess_config["size"] == [32, 32]


def test_identifier_without_schema_is_rejected():
    with pytest.raises(ValueError, match="hf-hub:org/repo"):
        load_open_clip_vision("ViT-L-14")


def test_processor_from_checkpoint(fused_model_dir, prepared_base):
    processor = ImageProcessor.from_pretrained(fused_model_dir)
    assert processor.image_size == (32, 32) and not processor.pad_to_square
    assert processor(Image.new("RGB", (50, 40), RED)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="config.json has no image_preprocess_config"):
        ImageProcessor.from_pretrained(prepared_base)


def noise(width, height):
    return Image.effect_noise((width, height), 60).convert("RGB")


@pytest.mark.parametrize("width, height", [(64, 48), (48, 64), (100, 30), (25, 190), (33, 32)])
def test_bounding_the_work_changes_nothing_for_ordinary_shapes(processor, width, height):
    image = noise(width, height)
    torch.testing.assert_close(processor(image)[0], processor.transform(image), atol=1e-5, rtol=0)


@pytest.mark.parametrize("width, height", [(8, 320), (500, 12)])
def test_thin_images_are_cropped_first_and_look_the_same(processor, width, height):
    gradient = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    bounded = processor(gradient)[0]
    assert (bounded - processor.transform(gradient)).abs().max() < 0.05


@pytest.mark.parametrize("width, height", [(64, 48), (30, 100), (3, 90)])
def test_shrinking_before_padding_keeps_the_padded_picture(width, height):
    from yuren_core.vision import expand_to_square

    config = {"size": SIZE, "mean": MEAN.flatten().tolist(), "std": STD.flatten().tolist()}
    padded = ImageProcessor(config, pad_to_square=True)
    image = noise(width, height)
    unbounded = padded.transform(expand_to_square(image, padded.fill))
    # Only the resampling at the edge between picture and padding differs.
    assert (padded(image)[0] - unbounded).abs().mean() < 0.05


@pytest.mark.parametrize("pad_to_square", [False, True])
@pytest.mark.parametrize("size", [(1, 1_000_000), (1_000_000, 1), (3, 400_000)])
def test_thin_and_tall_images_are_bounded_before_any_upscaling(size, pad_to_square):
    from yuren_core.vision import crop_to_kept_region, shrink_long_side

    image = Image.new("RGB", size, RED)
    assert max(crop_to_kept_region(image, (SIZE, SIZE)).size) <= 2 * min(size) + 2
    assert max(shrink_long_side(image, SIZE).size) == SIZE
    config = {"size": SIZE, "mean": MEAN.flatten().tolist(), "std": STD.flatten().tolist()}
    pixels = ImageProcessor(config, pad_to_square=pad_to_square)(image)
    assert pixels.shape == (1, 3, SIZE, SIZE)
    if not pad_to_square:
        torch.testing.assert_close(pixels[0], expected(RED))
