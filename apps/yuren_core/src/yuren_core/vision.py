"""The open_clip vision tower and all image preprocessing.

Two halves:

* the tower: :func:`load_open_clip_vision` reads an open_clip model
  (``hf-hub:...`` or ``local-dir:...``) once, when a fused model is first
  assembled; :func:`build_vision_tower` rebuilds the same architecture from the
  config stored in a YuRen checkpoint, whose weights then come from the
  checkpoint itself (no hub);
* the pixels: :class:`ImageProcessor` turns whatever users send (palette PNGs,
  transparent images, grayscale scans, rotated phone photos) into the tensor the
  tower expects. Trainer and web UI both build it from the checkpoint
  (:meth:`ImageProcessor.from_pretrained`), so they preprocess identically.
  The pixel limit it checks first is :mod:`yuren_core.images`' (torch-free).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip.transformer import VisionTransformer
from PIL import Image, ImageOps
from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize, ToTensor

from .images import DEFAULT_MAX_PIXELS, ImageSource, open_image
from .open_clip_compat import as_subclass, build_tower


@dataclass(frozen=True)
class VisionTower:
    """A vision tower read from open_clip, with what a YuRen config stores about it."""

    module: VisionTransformer
    open_clip_config: dict[str, Any]
    preprocess_config: dict[str, Any]


def load_open_clip_vision(identifier: str) -> VisionTower:
    """Load the vision tower (with weights) of the open_clip model ``identifier``.

    ``identifier`` uses open_clip's schemas: ``hf-hub:org/repo`` (downloads, or
    reads the hub cache) or ``local-dir:/path`` (a directory holding
    ``open_clip_config.json`` and the weights). The text tower is discarded.
    """
    if not identifier.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(
            f"unsupported open_clip identifier {identifier!r}: use 'hf-hub:org/repo' or 'local-dir:/path/to/dir'"
        )
    model_cfg = open_clip.get_model_config(identifier)
    clip = open_clip.create_model(identifier, precision="fp32", device="cpu", require_pretrained=True)
    open_clip_config = {
        "embed_dim": model_cfg["embed_dim"],
        "quick_gelu": model_cfg.get("quick_gelu", False),
        "vision_cfg": dict(model_cfg["vision_cfg"]),
    }
    tower = clip.visual
    _check_supported(tower, identifier)
    preprocess_config = dict(open_clip.get_model_preprocess_cfg(clip))
    preprocess_config["size"] = list(tower.image_size)
    return VisionTower(module=tower, open_clip_config=open_clip_config, preprocess_config=preprocess_config)


class PatchFeatureTower(VisionTransformer):
    """open_clip's ViT, called for the patch-token features of one block instead of the pooled embedding.

    Going through ``__call__`` rather than calling ``forward_intermediates`` from
    outside matters: module hooks run, and DeepSpeed ZeRO-3 gathers the tower's
    own parameters (class and position embeddings) in them.
    """

    def forward(self, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
        """Patch-token features ``[images, patches, width]`` of block ``layer`` (negative counts from the end).

        The CLS token is dropped and no final norm is applied, as in LLaVA.
        """
        output = self.forward_intermediates(
            pixel_values,
            indices=[layer],
            stop_early=True,
            intermediates_only=True,
            output_fmt="NLC",
        )
        return output["image_intermediates"][0]


def build_vision_tower(open_clip_config: Mapping[str, Any]) -> PatchFeatureTower:
    """Build a randomly initialised vision tower from the config :func:`load_open_clip_vision` returned."""
    tower = build_tower(open_clip_config)
    _check_supported(tower, "the checkpoint's open_clip_config")
    # open_clip's builder makes a plain VisionTransformer; the subclass only adds a forward, so re-classing the
    # built module keeps open_clip's construction logic (which this module must not copy) and its state dict.
    return as_subclass(tower, PatchFeatureTower)


def _check_supported(tower: Any, source: str) -> None:
    if not isinstance(tower, VisionTransformer):
        raise ValueError(
            f"{source} describes a {type(tower).__name__} vision tower; YuRen supports open_clip ViTs "
            "(VisionTransformer) only, whose patch tokens it feeds to the language model"
        )


def num_patches(open_clip_config: Mapping[str, Any]) -> int:
    """Patch tokens the tower produces per image (the CLS token not counted)."""
    vision = open_clip_config["vision_cfg"]
    height, width = _pair(vision["image_size"])
    patch_h, patch_w = _pair(vision["patch_size"])
    return (height // patch_h) * (width // patch_w)


def vision_width(open_clip_config: Mapping[str, Any]) -> int:
    """Width of the tower's token features (what the projector maps from)."""
    return int(open_clip_config["vision_cfg"]["width"])


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as 8-bit RGB the way the towers' reference preprocessing converts it: alpha dropped.

    open_clip's transform and transformers 4.30's ``CLIPImageProcessor`` (what
    upstream's release was trained with) both call ``convert("RGB")``, which
    keeps the colour stored under a transparent pixel instead of compositing
    it onto a background (a palette's transparent entry keeps its colour).
    The towers were trained on images converted that way, so they get them
    that way here too; later transformers composite onto white, which the
    release never saw. Palette images, grayscale, CMYK and images with alpha
    all come out as plain RGB. 16-bit grayscale is scaled to 8 bits rather
    than clipped at 255 as ``convert`` would.
    """
    if image.mode.startswith("I;16"):
        # Pillow's RGB conversion clips 16-bit values at 255; scale the full range instead.
        image = image.point(lambda value: value / 257).convert("L")
    return image.convert("RGB")


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad ``image`` (RGB) with ``fill`` to a centred square, so a center crop later loses nothing."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def shrink_long_side(image: Image.Image, size: int) -> Image.Image:
    """Downscale ``image`` (keeping its aspect ratio, sides at least 1 pixel) so its long side is at most ``size``."""
    width, height = image.size
    long_side = max(width, height)
    if long_side <= size:
        return image
    scale = size / long_side
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)


def crop_to_kept_region(image: Image.Image, size: tuple[int, int], *, max_stretch: int = 8) -> Image.Image:
    """Crop a thin or tall ``image`` to the centre region a shortest-side resize to ``size`` (h, w) would keep.

    That resize scales the short side up or down to the target and the long
    side by the same factor before the centre crop: a 1 x 1,000,000 image would
    become 224 x 224,000,000 pixels. When the resized long side would exceed
    ``max_stretch`` times the target, the image is first cropped to twice the
    region the centre crop keeps, which bounds the work by the target size.
    Images of ordinary shape are returned untouched; for the thin ones only the
    resize's rounding of the long side differs.
    """
    width, height = image.size
    target_h, target_w = size
    scale = max(target_h / height, target_w / width)
    if width * scale <= max_stretch * target_w and height * scale <= max_stretch * target_h:
        return image
    keep_w = min(width, math.ceil(2 * target_w / scale))
    keep_h = min(height, math.ceil(2 * target_h / scale))
    left, top = (width - keep_w) // 2, (height - keep_h) // 2
    return image.crop((left, top, left + keep_w, top + keep_h))


# Key of an image_preprocess_config that asks for transformers' CLIPImageProcessor centre crop, whose offset is
# floor((size - crop) / 2) where open_clip's (torchvision's) rounds: a one-pixel shift on many photos.
CROP_OFFSET = "crop_offset"


class FloorCenterCrop:
    """Centre crop to ``(height, width)`` with the offset rounded down, as ``CLIPImageProcessor`` crops."""

    def __init__(self, size: tuple[int, int]):
        self.height, self.width = size

    def __call__(self, image: Image.Image) -> Image.Image:
        left = (image.width - self.width) // 2
        top = (image.height - self.height) // 2
        return image.crop((left, top, left + self.width, top + self.height))


def floor_crop_transform(config: PreprocessCfg) -> Compose:
    """The eval transform of a checkpoint trained on ``CLIPImageProcessor`` output (shortest-edge resize only)."""
    if config.resize_mode != "shortest":
        raise ValueError(f"{CROP_OFFSET} 'floor' needs resize_mode 'shortest', not {config.resize_mode!r}")
    height, width = _pair(config.size)
    return Compose(
        [
            Resize(min(height, width), interpolation=InterpolationMode(config.interpolation)),
            FloorCenterCrop((height, width)),
            ToTensor(),
            Normalize(config.mean, config.std),
        ]
    )


class ImageProcessor:
    """Turn images into the ``pixel_values`` a YuRen model's vision tower takes.

    Steps, in order: size check, EXIF orientation, RGB conversion
    (:func:`to_rgb`), optional padding to a square (with the normalisation mean
    colour, as LLaVA does), then open_clip's resize / center crop / normalise
    from the checkpoint's preprocess config. Transparency is handled as the
    reference pipeline of the checkpoint's tower handles it, so pixels match
    it exactly: open_clip's transform resizes and crops with the alpha channel
    and drops it after; ``CLIPImageProcessor`` (a ``crop_offset: floor``
    config: upstream's release) and LLaVA's square padding drop it before. Before anything is scaled up, the image is
    bounded by what the tower sees (:func:`shrink_long_side` before padding,
    :func:`crop_to_kept_region` before a shortest-side resize), so the work per
    image never grows with how thin or tall it is.
    """

    def __init__(
        self,
        preprocess_config: Mapping[str, Any],
        *,
        pad_to_square: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        settings = dict(preprocess_config)
        crop_offset = settings.pop(CROP_OFFSET, "round")
        self.config = PreprocessCfg(**settings)
        self.pad_to_square = pad_to_square
        self.max_pixels = max_pixels
        self.transform = (
            floor_crop_transform(self.config)
            if crop_offset == "floor"
            else image_transform_v2(self.config, is_train=False)
        )
        # open_clip's transform resizes and crops an image with its alpha channel (Pillow premultiplies it while
        # resampling) and drops the alpha only then; CLIPImageProcessor and LLaVA's square padding drop it first.
        self.alpha_until_cropped = crop_offset != "floor" and not pad_to_square
        self.fill = tuple(round(channel * 255) for channel in self.config.mean)

    @classmethod
    def from_config(cls, config: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageProcessor:
        """Build the processor a :class:`~yuren_core.modeling.YuRenConfig` describes."""
        return cls(config.image_preprocess_config, pad_to_square=config.image_pad_to_square, max_pixels=max_pixels)

    @classmethod
    def from_pretrained(cls, path: str | PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageProcessor:
        """Build the processor of the YuRen checkpoint directory ``path`` (reads its ``config.json``)."""
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: {path} is not a saved YuRen checkpoint directory")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if "image_preprocess_config" not in config:
            raise ValueError(
                f"{config_file} has no image_preprocess_config: it is not a YuRen (image + text) checkpoint "
                f"(model_type {config.get('model_type')!r})"
            )
        return cls(
            config["image_preprocess_config"],
            pad_to_square=config.get("image_pad_to_square", False),
            max_pixels=max_pixels,
        )

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the tensors this processor produces."""
        return _pair(self.config.size)

    def prepare(self, image: ImageSource) -> Image.Image:
        """Everything before the resize: size check, EXIF orientation, RGB (or RGBA), optional square pad."""
        image = open_image(image, max_pixels=self.max_pixels)
        image = ImageOps.exif_transpose(image)
        if self.alpha_until_cropped and "A" in image.getbands():
            image = image.convert("RGBA")
        else:
            image = to_rgb(image)
        if self.pad_to_square:
            # Shrinking first: padding a 1 x 1,000,000 strip to a square would take 3 TB.
            image = expand_to_square(shrink_long_side(image, max(self.image_size)), self.fill)
        elif self.config.resize_mode == "shortest":
            image = crop_to_kept_region(image, self.image_size)
        return image

    def preprocess(self, image: ImageSource) -> torch.Tensor:
        """One image -> float tensor ``[3, height, width]``."""
        return self.transform(self.prepare(image))

    def __call__(self, images: ImageSource | Sequence[ImageSource]) -> torch.Tensor:
        """One image or a list -> ``pixel_values`` ``[images, 3, height, width]`` (float32)."""
        if isinstance(images, (Image.Image, str, PathLike, bytes)) or hasattr(images, "read"):
            images = [images]
        if not images:
            height, width = self.image_size
            return torch.empty(0, 3, height, width)
        return torch.stack([self.preprocess(image) for image in images])
