"""Upstream's released checkpoint format: loaded as a YuRen model, equal to upstream's own forward."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from transformers import CLIPImageProcessor, CLIPVisionModel
from upstream_release import (
    PATCHES,
    WEIGHT_FORMATS,
    build_clip,
    build_release,
    edited_release,
    reference_logits,
    wrong_shape_projector,
)

from yuren_core.chatml import image_block
from yuren_core.loading import load_model
from yuren_core.transformers_clip import ClipTowerError, load_transformers_clip_vision, preprocess_config_of
from yuren_core.vision import ImageProcessor
from yuren_core.vocab import special_ids


def prompt_ids(tokenizer) -> torch.Tensor:
    """A user turn with text and then an image block, as upstream's UI built it."""
    ids = special_ids(tokenizer)
    text = tokenizer.encode("帮我看看这张图片 and tell me", add_special_tokens=False)
    return torch.tensor([[ids.im_start, *text, *image_block(ids, PATCHES), ids.im_end, ids.im_start, *text[:3]]])


PIXELS = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_release_gives_upstreams_logits(release_dir):
    model, tokenizer, processor = load_model(release_dir)
    input_ids = prompt_ids(tokenizer)
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=PIXELS).logits
    reference = reference_logits(release_dir, input_ids, PIXELS)
    assert (logits - reference).abs().max() <= 1e-4
    # The image matters: without it the logits after the image differ.
    assert (logits - reference_logits(release_dir, input_ids, torch.zeros_like(PIXELS))).abs().max() > 1e-2
    assert model.config.image_position == "after_text"
    assert model.config.image_seq_len == PATCHES and model.config.vision_feature_layer == -2
    assert processor.image_size == (32, 32)


def test_release_tokenizer_has_upstreams_ids_and_a_safe_pad(release_dir):
    _, tokenizer, _ = load_model(release_dir)
    added = json.loads((release_dir / "added_tokens.json").read_text())
    ids = special_ids(tokenizer)
    assert (ids.im_start, ids.im_end, ids.img_patch, ids.img_start, ids.img_end) == tuple(added.values())
    assert ids.pad == tokenizer.unk_token_id == 0
    assert ids.pad not in set(added.values())


@pytest.mark.parametrize("weights", [w for w in WEIGHT_FORMATS if w != "bin"])
def test_bin_shards_and_safetensors_load_alike(tiny_dir, release_clip_dir, release_dir, tmp_path, weights):
    other = build_release(tiny_dir / "base", release_clip_dir, tmp_path / weights, weights=weights)
    reference, tokenizer, _ = load_model(release_dir)
    model, _, _ = load_model(other)
    input_ids = prompt_ids(tokenizer)
    with torch.no_grad():
        expected = reference(input_ids=input_ids, pixel_values=PIXELS).logits
        assert torch.equal(model(input_ids=input_ids, pixel_values=PIXELS).logits, expected)


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_clip_vision_converts_to_open_clip(tmp_path, hidden_act):
    clip_dir = build_clip(tmp_path / "clip", hidden_act=hidden_act, seed=1)
    tower = load_transformers_clip_vision(str(clip_dir), source="test")
    assert tower.open_clip_config["quick_gelu"] is (hidden_act == "quick_gelu")
    reference = CLIPVisionModel.from_pretrained(clip_dir).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden_states = reference(pixels, output_hidden_states=True).hidden_states
        for layer in (-1, -2):
            assert (tower.module.eval()(pixels, layer=layer) - hidden_states[layer][:, 1:]).abs().max() <= 1e-5


def photo_like(width: int = 640, height: int = 427) -> Image.Image:
    """Smooth gradients, soft shapes and fine grain: the statistics of a photo, not of flat test colours."""
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    base = np.concatenate([0.6 * x + 0.3 * y, 0.5 * (1 - x) + 0.4 * y, 0.3 + 0.5 * x * y], axis=2)
    image = Image.fromarray((base * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.2, height * 0.2, width * 0.55, height * 0.7), fill=(200, 60, 40))
    draw.rectangle((width * 0.6, height * 0.35, width * 0.9, height * 0.9), fill=(30, 90, 160))
    image = image.filter(ImageFilter.GaussianBlur(3))
    grain = np.random.default_rng(0).normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8))


def test_preprocessing_follows_the_clip_processor_config(tmp_path):
    # The release's CLIP processor settings (224 px, bicubic, centre crop, OpenAI mean/std).
    CLIPImageProcessor().save_pretrained(tmp_path)
    ours = ImageProcessor(preprocess_config_of(str(tmp_path), source="test"))
    image = photo_like()
    expected = CLIPImageProcessor.from_pretrained(tmp_path)(image, return_tensors="pt")["pixel_values"]
    got = ours(image)
    assert got.shape == expected.shape == (1, 3, 224, 224)
    assert (got - expected).abs().max() <= 0.05


def test_missing_vision_tower_is_named(release_dir, tmp_path):
    with pytest.raises(ValueError, match=r"config.json has no mm_vision_tower: set it to the hub id or local path"):
        load_model(edited_release(release_dir, tmp_path, mm_vision_tower=None))


def test_unreadable_vision_tower_is_named(release_dir, release_clip_dir, tmp_path):
    missing = tmp_path / "no-such-clip"
    with pytest.raises(ClipTowerError, match=r"field mm_vision_tower is '.*no-such-clip', which could not be read"):
        load_model(edited_release(release_dir, tmp_path, mm_vision_tower=str(missing)))
    no_processor = tmp_path / "clip-without-processor"
    shutil.copytree(release_clip_dir, no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(ClipTowerError, match=r"no readable CLIP image processor config \(preprocessor_config.json\)"):
        load_model(edited_release(release_dir, tmp_path / "b", mm_vision_tower=str(no_processor)))


def test_tower_width_must_be_mm_hidden_size(release_dir, tmp_path):
    narrow = build_clip(tmp_path / "narrow-clip", vision_width=32)
    with pytest.raises(ValueError, match=r"has 32-wide features but mm_hidden_size is 64"):
        load_model(edited_release(release_dir, tmp_path, mm_vision_tower=str(narrow)))


def test_patch_count_must_agree(release_dir, release_clip_dir, tmp_path):
    with pytest.raises(ValueError, match=rf"image_seq_len is 9 but mm_vision_tower .* gives {PATCHES} patches"):
        load_model(edited_release(release_dir, tmp_path, image_seq_len=9))
    bigger = tmp_path / "clip-48px-processor"
    shutil.copytree(release_clip_dir, bigger)
    CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}).save_pretrained(bigger)
    with pytest.raises(ClipTowerError, match=rf"makes \[48, 48\] px images \(36 patches\) .* \({PATCHES} patches\)"):
        load_model(edited_release(release_dir, tmp_path / "b", mm_vision_tower=str(bigger)))


def test_saved_vision_tower_weights_are_the_ones_used(tiny_dir, release_clip_dir, tmp_path, caplog):
    """A checkpoint holding its CLIP tower (upstream's save outside FSDP) loads, and computes with that tower."""
    other = build_clip(tmp_path / "other-clip", seed=1)
    release = build_release(tiny_dir / "base", release_clip_dir, tmp_path / "with-tower", saved_tower=other)
    with caplog.at_level(logging.WARNING, logger="yuren_core.upstream"):
        model, tokenizer, _ = load_model(release)
    assert "differ from those of mm_vision_tower" in caplog.text
    input_ids = prompt_ids(tokenizer)
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=PIXELS).logits
    assert (logits - reference_logits(release, input_ids, PIXELS, vision_tower=other)).abs().max() <= 1e-4
    # mm_vision_tower's own weights would give other logits.
    assert (logits - reference_logits(release, input_ids, PIXELS)).abs().max() > 1e-2


def test_saved_vision_tower_equal_to_mm_vision_tower_changes_nothing(
    tiny_dir, release_clip_dir, release_dir, tmp_path, caplog
):
    release = build_release(tiny_dir / "base", release_clip_dir, tmp_path / "same", saved_tower=release_clip_dir)
    reference, tokenizer, _ = load_model(release_dir)
    with caplog.at_level(logging.WARNING, logger="yuren_core.upstream"):
        model, _, _ = load_model(release)
    assert "differ from those of mm_vision_tower" not in caplog.text
    input_ids = prompt_ids(tokenizer)
    with torch.no_grad():
        expected = reference(input_ids=input_ids, pixel_values=PIXELS).logits
        assert torch.equal(model(input_ids=input_ids, pixel_values=PIXELS).logits, expected)


def test_incomplete_saved_vision_tower_is_named(release_dir, release_clip_dir, tmp_path):
    release = edited_release(release_dir, tmp_path)
    state = torch.load(release / "pytorch_model.bin", weights_only=True)
    state["model.vision_tower.vision_model.pre_layrnorm.weight"] = torch.ones(64)
    torch.save(state, release / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"holds vision tower weights .* but not model\.vision_tower\.vision_model\."):
        load_model(release)


def test_wrong_shape_projector_is_named(release_dir, tmp_path):
    release = wrong_shape_projector(release_dir, tmp_path)
    with pytest.raises(
        ValueError, match=r"model\.mm_projector\.weight has shape \[\d+, 32\] but config.json \(mm_hidden_size 64"
    ):
        load_model(release)


def test_release_loads_without_transformers_reports_of_weights_filled_in_later(release_dir, capfd):
    # The CLIP text half is left out and the tower filled in after from_pretrained: transformers' load report
    # would call all of it UNEXPECTED or MISSING although nothing is wrong.
    from transformers.utils import logging as transformers_logging

    before = transformers_logging.get_verbosity()
    load_model(release_dir)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "MISSING" not in err and "UNEXPECTED" not in err, err[-2000:]
    assert "You are using a model of type" not in err
    assert transformers_logging.get_verbosity() == before
