"""The open_clip seams YuRen relies on (yuren_core.open_clip_compat): each fails here, loudly, when open_clip changes."""

from __future__ import annotations

import inspect

import open_clip
import torch
from open_clip.model import _build_vision_tower
from open_clip.transformer import VisionTransformer

from yuren_core.open_clip_compat import OPEN_CLIP_MAJOR, as_subclass, build_tower
from yuren_core.vision import PatchFeatureTower

CONFIG = {
    "embed_dim": 16,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
}


def test_open_clip_is_the_major_version_the_seams_were_written_for():
    assert int(open_clip.__version__.split(".")[0]) == OPEN_CLIP_MAJOR


def test_the_private_builder_takes_what_build_tower_passes():
    parameters = inspect.signature(_build_vision_tower).parameters
    assert list(parameters)[:3] == ["embed_dim", "vision_cfg", "quick_gelu"]


def test_a_built_tower_re_classed_keeps_its_weights_and_answers_through_the_subclass():
    torch.manual_seed(0)
    tower = build_tower(CONFIG)
    # Exactly open_clip's class: a subclass of it adding only methods can take its place.
    assert type(tower) is VisionTransformer
    names = {name: value.clone() for name, value in tower.state_dict().items()}
    patched = as_subclass(tower, PatchFeatureTower)
    assert patched is tower and isinstance(patched, PatchFeatureTower)
    assert {name: value for name, value in patched.state_dict().items()}.keys() == names.keys()
    assert all(torch.equal(patched.state_dict()[name], value) for name, value in names.items())
    features = patched(torch.randn(2, 3, 32, 32), layer=-1)
    assert features.shape == (2, 16, 32)
