"""Every place YuRen reaches into open_clip beyond its documented API, in one module.

open_clip (3.x, pinned in ``uv.lock``) builds a vision tower from a config only
inside its private ``_build_vision_tower``; its public ``create_model`` needs a
named model and builds the text tower too. YuRen rebuilds the tower a
checkpoint's ``open_clip_config`` describes through that function, then gives
the built ``VisionTransformer`` a subclass that only adds a ``forward`` (so
open_clip's construction logic is not copied and the state dict keeps its
names). ``tests/yuren_core/test_open_clip_compat.py`` fails loudly when an
open_clip release changes either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from open_clip.model import _build_vision_tower
from open_clip.transformer import VisionTransformer

# The open_clip major version these seams were written for.
OPEN_CLIP_MAJOR = 3

Tower = TypeVar("Tower", bound=VisionTransformer)


def build_tower(open_clip_config: Mapping[str, Any]):
    """open_clip's vision tower for ``open_clip_config`` (``embed_dim``, ``vision_cfg``, ``quick_gelu``), random weights."""
    return _build_vision_tower(
        open_clip_config["embed_dim"],
        dict(open_clip_config["vision_cfg"]),
        quick_gelu=open_clip_config.get("quick_gelu", False),
    )


def as_subclass(tower: VisionTransformer, subclass: type[Tower]) -> Tower:
    """``tower`` itself, re-classed as ``subclass`` (which may add methods only, no state)."""
    tower.__class__ = subclass
    return tower
