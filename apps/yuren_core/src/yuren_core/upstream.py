"""Upstream's released checkpoint format (``model_type: "multimodal_llama"``, e.g. ``pleisto/yuren-baichuan-7b``).

Such a checkpoint holds LLaMA weights plus ``model.mm_projector.*``
(``pytorch_model*.bin`` shards or safetensors), slow sentencepiece tokenizer
files without a pad token, and a ``config.json`` whose ``mm_vision_tower``
names a transformers CLIP checkpoint read at load time. One saved by
upstream's training outside FSDP also holds the CLIP tower's weights
(``model.vision_tower.vision_model.*``); those are used. :func:`load_upstream`
reads it as a :class:`~yuren_core.modeling.YuRenForCausalLM`: the CLIP vision
weights converted into the open_clip tower, the projector moved to its YuRen
name, the image block placed after the user's text as upstream's UI put it.
Saved again (``convert-checkpoint``), it is an ordinary YuRen checkpoint.
"""

from __future__ import annotations

import json
import logging
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open
from transformers import PretrainedConfig

from .loading_reports import reported_by_the_caller
from .modeling import YuRenConfig, YuRenForCausalLM
from .transformers_clip import load_transformers_clip_vision, open_clip_state_dict
from .transformers_compat import save_under_own_names
from .vision import VisionTower, num_patches, vision_width
from .vocab import special_ids

logger = logging.getLogger(__name__)

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
# Where upstream's initialize_vision_modules put the CLIPVisionModel (outside FSDP), so save_pretrained wrote its
# weights there under CLIPVisionModel's own names: model.vision_tower.vision_model.encoder.layers.0....
SAVED_TOWER_PREFIX = "model.vision_tower."
# The weight files from_pretrained reads, in the order it prefers them (an index names the shards).
WEIGHT_FILES = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


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
    # The tower is filled in below and the loading info checked here: transformers' report would list every
    # tower weight as MISSING.
    with reported_by_the_caller():
        config, tower = upstream_config(path, tokenizer)
        # Mismatched shapes come back in the loading info, to be reported with the field to fix.
        model, info = YuRenForCausalLM.from_pretrained(
            path,
            config=config,
            key_mapping=KEY_MAPPING,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            **from_pretrained_kwargs,
        )
    if info["mismatched_keys"]:
        key, saved_shape, model_shape = sorted(info["mismatched_keys"])[0]
        raise ValueError(mismatch_message(path, config, key, tuple(saved_shape), tuple(model_shape)))
    missing = [k for k in info["missing_keys"] if not k.startswith("vision_tower.")]
    unexpected = [k for k in info["unexpected_keys"] if not k.endswith(IGNORED_KEYS)]
    saved_tower = [k for k in unexpected if k.startswith(SAVED_TOWER_PREFIX)]
    unexpected = [k for k in unexpected if k not in saved_tower]
    if missing or unexpected:
        raise ValueError(
            f"the weights in {path} do not match its config.json: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}"
        )
    state = tower.module.state_dict()
    if saved_tower:
        saved = saved_tower_state(path, state, config.open_clip_config["vision_cfg"]["layers"])
        if any(not torch.equal(value, state[key].to(value.dtype)) for key, value in saved.items()):
            # Upstream trained with the tower frozen, so they are equal unless mm_vision_tower changed since.
            logger.warning(
                "%s: the vision tower weights saved in the checkpoint differ from those of mm_vision_tower %r; the "
                "saved ones are used (upstream's own loader ignored them and used mm_vision_tower's)",
                path,
                config_tower_id(path),
            )
        state.update(saved)
    model.vision_tower.load_state_dict(state)
    # transformers saves a model under the names it was loaded from; this one is a YuRen model now, and saves
    # (convert-checkpoint, the trainers) as one.
    save_under_own_names(model)
    ids = special_ids(tokenizer)
    model.generation_config.eos_token_id = [ids.im_end, ids.eos]
    model.generation_config.pad_token_id = ids.pad
    return model


def config_tower_id(path: str) -> str:
    """The ``mm_vision_tower`` of the checkpoint at ``path``."""
    return read_config_dict(path)["mm_vision_tower"]


def mismatch_message(path: str, config: YuRenConfig, key: str, saved: tuple, expected: tuple) -> str:
    """What is wrong when the weight ``key`` of the checkpoint at ``path`` has another shape than its config makes."""
    if key.startswith("mm_projector."):
        return (
            f"{path}: model.{key} has shape {list(saved)} but config.json (mm_hidden_size "
            f"{vision_width(config.open_clip_config)}, hidden_size {config.hidden_size}) makes it {list(expected)}; "
            "the projector was trained for another vision tower or model: set mm_vision_tower (and mm_hidden_size) "
            "to the CLIP model it was trained with, or use the projector trained for this one"
        )
    return (
        f"{path}: the weight {key} has shape {list(saved)} but config.json makes it {list(expected)}; the weights "
        "and config.json come from different models: use the config.json saved with these weights"
    )


def saved_tower_state(path: str, state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The vision tower weights saved in the checkpoint at ``path``, under the names of the tower's ``state``.

    They are what the projector was trained against; they replace those read
    from ``mm_vision_tower``, which only has to describe the tower (config and
    image processor). The saved tower has no projection; ``state``'s is kept
    (patch features are read from inside the tower, before it).
    """
    saved = {k: v for k, v in saved_weights(path, SAVED_TOWER_PREFIX).items() if not k.endswith("position_ids")}
    try:
        converted = open_clip_state_dict(saved, layers)
    except KeyError as error:
        raise ValueError(
            f"{path} holds vision tower weights ({SAVED_TOWER_PREFIX}*) but not {SAVED_TOWER_PREFIX}{error.args[0]}; "
            "the checkpoint is incomplete: save it again, or remove its vision tower weights to use mm_vision_tower's"
        ) from None
    del converted["proj"]
    for key, value in converted.items():
        if value.shape != state[key].shape:
            raise ValueError(
                f"{path}: the saved vision tower weight for {key} has shape {list(value.shape)} but config.json's "
                f"mm_vision_tower describes {list(state[key].shape)}; point mm_vision_tower at the CLIP model the "
                "checkpoint was trained with"
            )
    return converted


def saved_weights(path: str, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors stored in the checkpoint at ``path`` (directory or cached hub id) under ``prefix``, prefix removed.

    Reads the same files ``from_pretrained`` does, only the shards that hold
    such tensors, and only those tensors from them.
    """
    for index_name, single_name in WEIGHT_FILES:
        index = checkpoint_file(path, index_name)
        if index is not None:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted({name for key, name in weight_map.items() if key.startswith(prefix)})
            files = [checkpoint_file(path, name) for name in names]
            break
        single = checkpoint_file(path, single_name)
        if single is not None:
            files = [single]
            break
    else:
        raise ValueError(f"{path} has no weight files ({', '.join(n for pair in WEIGHT_FILES for n in pair)})")
    weights = {}
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                weights.update({k[len(prefix) :]: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)})
        else:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            weights.update({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return weights


def checkpoint_file(path: str, name: str) -> Path | None:
    """The file ``name`` of the checkpoint at ``path``: in the directory, or in the hub cache for a hub id."""
    if Path(path).is_dir():
        file = Path(path) / name
        return file if file.is_file() else None
    cached = try_to_load_from_cache(path, name)
    return Path(cached) if isinstance(cached, str) else None
