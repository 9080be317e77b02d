"""A transformers CLIP checkpoint read as YuRen's open_clip vision tower.

Upstream's released model names its vision tower by the hub id (or path) of a
transformers ``CLIPModel`` (``mm_vision_tower``), read at load time. YuRen has
one vision tower class, open_clip's ViT, so :func:`load_transformers_clip_vision`
converts the weights into it (q/k/v into ``in_proj``, embeddings, layer norms,
patch conv) and turns the checkpoint's ``CLIPImageProcessor`` config into the
open_clip preprocess config :class:`~yuren_core.vision.ImageProcessor` reads.
The result is the same :class:`~yuren_core.vision.VisionTower` that
:func:`~yuren_core.vision.load_open_clip_vision` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import (
    AutoConfig,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

from .loading_reports import reported_by_the_caller
from .vision import CROP_OFFSET, VisionTower, build_vision_tower, num_patches

# transformers' activation names -> open_clip's quick_gelu flag (open_clip's other choice is exact GELU).
QUICK_GELU = {"quick_gelu": True, "gelu": False}
# PIL resampling codes CLIPImageProcessor stores -> open_clip's interpolation names.
INTERPOLATION = {2: "bilinear", 3: "bicubic"}
# open_clip's ViT hard-codes this LayerNorm epsilon.
OPEN_CLIP_LAYER_NORM_EPS = 1e-5


class ClipTowerError(ValueError):
    """The CLIP checkpoint a model names cannot be used as its vision tower; the message says why and what to do."""


def load_transformers_clip_vision(identifier: str, *, source: str) -> VisionTower:
    """Load the vision tower of the transformers CLIP checkpoint ``identifier`` (hub id or path) as open_clip's.

    ``source`` names where ``identifier`` came from (a config file and field),
    for error messages. Raises :class:`ClipTowerError` when the checkpoint
    cannot be read or is not a CLIP ViT that open_clip can express.
    """
    if not Path(identifier).exists() and not is_repo_id(identifier):
        raise ClipTowerError(
            f"{source} is {identifier!r}, which could not be read: there is no such directory; point it at the "
            "hub id or local directory of the CLIP model the checkpoint was trained with"
        )
    try:
        config = AutoConfig.from_pretrained(identifier)
    except (OSError, ValueError) as error:
        raise ClipTowerError(
            f"{source} is {identifier!r}, which could not be read as a transformers CLIP checkpoint ({error}); "
            "point it at the hub id or local directory of the CLIP model the checkpoint was trained with"
        ) from error
    if isinstance(config, CLIPConfig):
        vision_config = config.vision_config
        # The vision config alone does not carry the projection width; the full CLIP config does.
        vision_config.projection_dim = config.projection_dim
        model_class = CLIPVisionModelWithProjection
        embed_dim = config.projection_dim
    elif isinstance(config, CLIPVisionConfig):
        vision_config = config
        model_class = CLIPVisionModel
        embed_dim = config.hidden_size
    else:
        raise ClipTowerError(
            f"{source} is {identifier!r}, a {config.model_type!r} model; it must name a transformers CLIP "
            "checkpoint (model_type 'clip' or 'clip_vision_model')"
        )
    open_clip_config = open_clip_config_of(vision_config, embed_dim, source=f"{identifier}/config.json")
    preprocess_config = preprocess_config_of(identifier, source=source)
    tower_patches = num_patches(open_clip_config)
    processor_patches = num_patches(
        {"vision_cfg": {**open_clip_config["vision_cfg"], "image_size": preprocess_config["size"]}}
    )
    if processor_patches != tower_patches:
        raise ClipTowerError(
            f"{identifier}: its image processor makes {preprocess_config['size']} px images ({processor_patches} "
            f"patches) but its config.json describes a {vision_config.image_size} px tower ({tower_patches} patches); "
            "fix crop_size in preprocessor_config.json or image_size in config.json so they agree"
        )

    try:
        # The text half is left out on purpose; the loading info is checked below.
        with reported_by_the_caller():
            clip, info = model_class.from_pretrained(
                identifier, config=vision_config, dtype=torch.float32, output_loading_info=True
            )
    except (OSError, ValueError, RuntimeError) as error:
        raise ClipTowerError(f"{source} is {identifier!r}, whose vision weights could not be read: {error}") from error
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ClipTowerError(
            f"{identifier} lacks vision tower weights its config.json describes: missing "
            f"{sorted(info['missing_keys'])[:5]}, mismatched {sorted(info['mismatched_keys'])[:5]}"
        )
    tower = build_vision_tower(open_clip_config)
    tower.load_state_dict(open_clip_state_dict(clip.state_dict(), vision_config.num_hidden_layers))
    return VisionTower(module=tower, open_clip_config=open_clip_config, preprocess_config=preprocess_config)


def is_repo_id(identifier: str) -> bool:
    """Whether ``identifier`` has a hub id's form (``org/repo``); a path with more parts cannot be one."""
    try:
        validate_repo_id(identifier)
    except HFValidationError:
        return False
    return True


def open_clip_config_of(vision_config: CLIPVisionConfig, embed_dim: int, *, source: str) -> dict[str, Any]:
    """The open_clip tower config (as YuRenConfig stores it) of a transformers CLIP vision config."""
    act = vision_config.hidden_act
    if act not in QUICK_GELU:
        raise ClipTowerError(f"{source}: vision hidden_act {act!r} is not supported (only {sorted(QUICK_GELU)})")
    if vision_config.layer_norm_eps != OPEN_CLIP_LAYER_NORM_EPS:
        raise ClipTowerError(
            f"{source}: vision layer_norm_eps {vision_config.layer_norm_eps} is not supported (open_clip uses "
            f"{OPEN_CLIP_LAYER_NORM_EPS})"
        )
    width, heads = vision_config.hidden_size, vision_config.num_attention_heads
    mlp_ratio = vision_config.intermediate_size / width
    if width % heads or int(width * mlp_ratio) != vision_config.intermediate_size:
        raise ClipTowerError(
            f"{source}: hidden_size {width}, {heads} heads, intermediate_size "
            f"{vision_config.intermediate_size} do not form an open_clip ViT"
        )
    return {
        "embed_dim": embed_dim,
        "quick_gelu": QUICK_GELU[act],
        "vision_cfg": {
            "image_size": vision_config.image_size,
            "patch_size": vision_config.patch_size,
            "width": width,
            "layers": vision_config.num_hidden_layers,
            "head_width": width // heads,
            "mlp_ratio": mlp_ratio,
        },
    }


def preprocess_config_of(identifier: str, *, source: str) -> dict[str, Any]:
    """open_clip's preprocess config equivalent to the ``CLIPImageProcessor`` saved with ``identifier``.

    Supported: resize of the shortest edge to the crop size (bicubic or
    bilinear), centre crop, rescale by 1/255, normalise; anything else is
    refused rather than preprocessed differently from training.
    """
    try:
        processor = CLIPImageProcessor.from_pretrained(identifier)
    except (OSError, ValueError) as error:
        raise ClipTowerError(
            f"{source} is {identifier!r}, which has no readable CLIP image processor config "
            f"(preprocessor_config.json): {error}"
        ) from error
    where = f"{identifier}/preprocessor_config.json"
    crop = processor.crop_size
    shortest = (processor.size or {}).get("shortest_edge")
    needed = {
        "do_resize": processor.do_resize,
        "do_center_crop": processor.do_center_crop,
        "do_rescale": processor.do_rescale and abs(processor.rescale_factor - 1 / 255) < 1e-9,
        "do_normalize": processor.do_normalize,
    }
    off = [name for name, on in needed.items() if not on]
    if off:
        raise ClipTowerError(f"{where}: {off} must be on (rescale_factor 1/255) for YuRen's image processor")
    if shortest is None or crop["height"] != crop["width"] or shortest != crop["height"]:
        raise ClipTowerError(
            f"{where}: size {processor.size} with crop_size {crop} is not supported; YuRen resizes the shortest "
            "edge to a square crop's side (size {'shortest_edge': N}, crop_size N x N)"
        )
    resample = int(processor.resample)
    if resample not in INTERPOLATION:
        raise ClipTowerError(f"{where}: resample {resample} is not supported (2: bilinear, 3: bicubic)")
    return {
        "size": [crop["height"], crop["width"]],
        "mode": "RGB",
        "mean": [float(x) for x in processor.image_mean],
        "std": [float(x) for x in processor.image_std],
        "interpolation": INTERPOLATION[resample],
        "resize_mode": "shortest",
        "fill_color": 0,
        CROP_OFFSET: "floor",
    }


def open_clip_state_dict(weights: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The weights of a transformers CLIP vision model (its ``state_dict()``) under open_clip's ViT names.

    A model without a projection (``CLIPVisionModel``) gets an identity one:
    YuRen reads patch features from inside the tower, never the projected output.
    Raises ``KeyError`` naming a weight ``weights`` lacks.
    """
    vision = "vision_model."
    out = {
        "class_embedding": weights[f"{vision}embeddings.class_embedding"],
        "positional_embedding": weights[f"{vision}embeddings.position_embedding.weight"],
        "conv1.weight": weights[f"{vision}embeddings.patch_embedding.weight"],
    }
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for part in ("weight", "bias"):
            out[f"{ours}.{part}"] = weights[f"{vision}{theirs}.{part}"]
    for i in range(layers):
        theirs, ours = f"{vision}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            # open_clip's attention takes q, k and v stacked in one projection, in that order.
            out[f"{ours}attn.in_proj_{part}"] = torch.cat(
                [weights[f"{theirs}self_attn.{name}_proj.{part}"] for name in ("q", "k", "v")]
            )
            for their_name, our_name in (
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ):
                out[f"{ours}{our_name}.{part}"] = weights[f"{theirs}{their_name}.{part}"]
    projection = weights.get("visual_projection.weight")
    width = out["class_embedding"].shape[0]
    out["proj"] = projection.T.contiguous() if projection is not None else torch.eye(width)
    return out
