"""Upstream's released checkpoint format (``model_type: "multimodal_llama"``, e.g. ``pleisto/yuren-baichuan-7b``).

Such a checkpoint holds LLaMA weights plus ``model.mm_projector.*``
(``pytorch_model*.bin`` shards or safetensors), slow sentencepiece tokenizer
files without a pad token, and a ``config.json`` whose ``mm_vision_tower``
names a transformers CLIP checkpoint read at load time. :func:`load_upstream`
reads it as a :class:`~yuren_core.modeling.YuRenForCausalLM`: the CLIP vision
weights converted into the open_clip tower, the projector moved to its YuRen
name, the image block placed after the user's text as upstream's UI put it.
Saved again (``convert-checkpoint``), it is an ordinary YuRen checkpoint.
"""

from __future__ import annotations

from os import PathLike
from typing import Any

from transformers import PretrainedConfig
from transformers.conversion_mapping import get_model_conversion_mapping

from .modeling import YuRenConfig, YuRenForCausalLM
from .transformers_clip import load_transformers_clip_vision
from .vision import VisionTower, num_patches, vision_width
from .vocab import special_ids

UPSTREAM_MODEL_TYPE = "multimodal_llama"
# config.json keys of upstream's vision side; YuRenConfig records the same facts its own way.
UPSTREAM_VISION_KEYS = ("use_mm_proj", "mm_hidden_size", "mm_vision_select_layer", "mm_vision_tower")
CLASS_KEYS = ("model_type", "architectures", "transformers_version", "_name_or_path")
# Upstream placed the image block after the user's text (its UI appended it), so the release was tuned that way.
UPSTREAM_IMAGE_POSITION = "after_text"
# Weights upstream stores under the LLaMA body that YuRen keeps at the top level.
KEY_MAPPING = {r"^model\.mm_projector\.": "mm_projector."}
# transformers <= 4.30 saved the rotary frequencies; they are recomputed from the config.
IGNORED_KEYS = ("rotary_emb.inv_freq",)


def read_config_dict(path: str | PathLike) -> dict[str, Any]:
    """The raw ``config.json`` of a checkpoint directory or hub id (no config class needed)."""
    config, _ = PretrainedConfig.get_config_dict(str(path))
    return config


def is_upstream_checkpoint(path: str | PathLike) -> bool:
    """Whether ``path`` (directory or hub id) holds a checkpoint in upstream's released format."""
    return read_config_dict(path).get("model_type") == UPSTREAM_MODEL_TYPE


def upstream_config(path: str | PathLike, tokenizer) -> tuple[YuRenConfig, VisionTower]:
    """The YuRen config equivalent to the upstream checkpoint at ``path``, and its converted vision tower.

    Raises ``ValueError`` naming the config field and what to do when the
    vision tower is missing, unreadable or does not fit the checkpoint.
    """
    raw = read_config_dict(path)
    source = f"{path}/config.json"
    if raw.get("model_type") != UPSTREAM_MODEL_TYPE:
        raise ValueError(f"{source} has model_type {raw.get('model_type')!r}, not {UPSTREAM_MODEL_TYPE!r}")
    tower_id = raw.get("mm_vision_tower")
    if not tower_id:
        raise ValueError(
            f"{source} has no mm_vision_tower: set it to the hub id or local path of the transformers CLIP model "
            "the checkpoint was trained with (the release used laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K)"
        )
    if not raw.get("use_mm_proj", False) or "mm_hidden_size" not in raw:
        raise ValueError(f"{source} lacks use_mm_proj: true and mm_hidden_size; it is not an image + text checkpoint")
    tower = load_transformers_clip_vision(tower_id, source=f"{source} field mm_vision_tower")
    width = vision_width(tower.open_clip_config)
    if width != raw["mm_hidden_size"]:
        raise ValueError(
            f"{source}: mm_vision_tower {tower_id!r} has {width}-wide features but mm_hidden_size is "
            f"{raw['mm_hidden_size']} (the projector's input width); point mm_vision_tower at the CLIP model the "
            "checkpoint was trained with"
        )
    patches = num_patches(tower.open_clip_config)
    if raw.get("image_seq_len") not in (None, patches):
        raise ValueError(
            f"{source}: image_seq_len is {raw['image_seq_len']} but mm_vision_tower {tower_id!r} gives {patches} "
            "patches per image; point mm_vision_tower at the CLIP model the checkpoint was trained with"
        )
    ids = special_ids(tokenizer)
    settings = {k: v for k, v in raw.items() if k not in (*UPSTREAM_VISION_KEYS, *CLASS_KEYS, "image_seq_len")}
    config = YuRenConfig(
        **settings,
        open_clip_config=tower.open_clip_config,
        image_preprocess_config=tower.preprocess_config,
        vision_feature_layer=raw.get("mm_vision_select_layer", -1),
        img_start_token_id=ids.img_start,
        img_patch_token_id=ids.img_patch,
        img_end_token_id=ids.img_end,
        image_position=UPSTREAM_IMAGE_POSITION,
    )
    config.pad_token_id = ids.pad
    return config, tower


def load_upstream(path: str | PathLike, tokenizer, **from_pretrained_kwargs) -> YuRenForCausalLM:
    """Load the upstream checkpoint at ``path`` as a YuRen model (``from_pretrained_kwargs``: dtype, device_map, ...).

    ``tokenizer`` is the checkpoint's own (it gives the image token ids).
    Stopping and padding are set as YuRen's own checkpoints have them: the
    answer ends at ``<|im_end|>``, padding uses :func:`~yuren_core.vocab.special_ids`'s pad.
    """
    path = str(path)
    config, tower = upstream_config(path, tokenizer)
    model, info = YuRenForCausalLM.from_pretrained(
        path, config=config, key_mapping=KEY_MAPPING, output_loading_info=True, **from_pretrained_kwargs
    )
    missing = [k for k in info["missing_keys"] if not k.startswith("vision_tower.")]
    unexpected = [k for k in info["unexpected_keys"] if not k.endswith(IGNORED_KEYS)]
    if missing or unexpected or info["mismatched_keys"]:
        raise ValueError(
            f"the weights in {path} do not match its config.json: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}, mismatched {sorted(info['mismatched_keys'])[:5]}"
        )
    model.vision_tower.load_state_dict(tower.module.state_dict())
    # transformers saves a model under the names it was loaded from; this one is a YuRen model now, and saves
    # (convert-checkpoint, the trainers) as one: what loading a YuRen checkpoint would have attached.
    model._weight_conversions = get_model_conversion_mapping(model, hf_quantizer=getattr(model, "hf_quantizer", None))
    ids = special_ids(tokenizer)
    model.generation_config.eos_token_id = [ids.im_end, ids.eos]
    model.generation_config.pad_token_id = ids.pad
    return model
