"""A tiny open_clip ViT, on disk exactly as an open_clip hub repository is.

``hf-hub:laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K`` is a directory with
``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and the CLIP
weights. This writes the same two files for a randomly initialised model small
enough for tests, so the fused-model code loads it through open_clip's own
``local-dir:`` schema, the path the real tower takes through ``hf-hub:``.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

# open_clip looks for this name first in a local directory.
WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"


def build_tiny_clip(
    out_dir: Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 64,
    layers: int = 2,
    heads: int = 2,
    embed_dim: int = 32,
    text_width: int = 32,
    text_layers: int = 1,
    text_heads: int = 2,
    text_vocab_size: int = 1000,
    context_length: int = 16,
    seed: int = 0,
) -> Path:
    """Write a tiny random open_clip CLIP (config + safetensors weights) to ``out_dir``; return it.

    The vision tower has ``(image_size // patch_size) ** 2`` patch tokens of
    width ``width``. The text tower is only there because an open_clip CLIP
    checkpoint always has one; YuRen never uses it, so it is as small as allowed.
    """
    if image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
    if width % heads or text_width % text_heads:
        raise ValueError(
            f"widths ({width}, {text_width}) must be multiples of their head counts ({heads}, {text_heads})"
        )
    model_cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "patch_size": patch_size,
            "width": width,
            "layers": layers,
            # open_clip derives the head count as width // head_width.
            "head_width": width // heads,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": text_vocab_size,
            "width": text_width,
            "heads": text_heads,
            "layers": text_layers,
        },
    }
    # The real checkpoint's preprocessing (open_clip's defaults, written out so the file is explicit).
    preprocess_cfg = {
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }

    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    state_dict = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(state_dict, out_dir / WEIGHTS_NAME, metadata={"format": "pt"})
    return out_dir
