"""The fused image + text model: LLaMA with an open_clip vision tower and a linear projector.

An image in a sequence is ``<|img_start|>`` + N x ``<|img_patch|>`` + ``<|img_end|>``
(N = the tower's patch count, ``config.image_seq_len``). On the first forward the
tower encodes ``pixel_values``, the projector maps each patch feature to the LLM's
hidden size, and :func:`merge_image_features` writes them over the patch-token
embeddings. Later generation steps reuse the KV cache, which already holds them.

Importing this module registers the classes with ``AutoConfig`` and
``AutoModelForCausalLM`` (:mod:`yuren_core.loading` imports it), so a saved checkpoint
loads with ``AutoModelForCausalLM.from_pretrained(dir)``: no hub, no remote code.
"""

from __future__ import annotations

from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

from .constants import IMAGE_POSITIONS
from .vision import build_vision_tower, num_patches, vision_width


@strict
class YuRenConfig(LlamaConfig):
    r"""LLaMA configuration plus what the vision side needs.

    open_clip_config (`dict`):
        The open_clip vision tower's architecture: ``embed_dim``, ``quick_gelu`` and ``vision_cfg``
        as in an ``open_clip_config.json``'s ``model_cfg`` (text tower left out).
    image_preprocess_config (`dict`):
        open_clip's preprocess config for that tower (size, mean, std, interpolation, resize_mode, ...).
    image_pad_to_square (`bool`, defaults to `False`):
        Whether images are padded to a square before resizing (training and serving must agree).
    vision_feature_layer (`int`, defaults to -2):
        Which transformer block's output feeds the projector; negative counts from the end
        (-2: the penultimate block, as LLaVA). Only patch tokens are used; the CLS token is dropped.
    img_start_token_id, img_patch_token_id, img_end_token_id (`int`):
        Ids of ``<|img_start|>``, ``<|img_patch|>``, ``<|img_end|>``.
    image_seq_len (`int`):
        Patch tokens per image; always the tower's patch count (filled in from ``open_clip_config``).
    image_position (`str`, defaults to `"before_text"`):
        Where a user turn's images stood relative to its text in training: ``"before_text"``
        (LLaVA-style data, YuRen's stage 3 records what its data did) or ``"after_text"``
        (upstream's released model). Prompts built at inference place images the same way.
    """

    model_type = "yuren"

    open_clip_config: dict | None = None
    image_preprocess_config: dict | None = None
    image_pad_to_square: bool = False
    vision_feature_layer: int = -2
    img_start_token_id: int | None = None
    img_patch_token_id: int | None = None
    img_end_token_id: int | None = None
    image_seq_len: int | None = None
    image_position: str = "before_text"

    def __post_init__(self, **kwargs):
        if self.image_position not in IMAGE_POSITIONS:
            raise ValueError(
                f"config field image_position must be one of {', '.join(map(repr, IMAGE_POSITIONS))}, "
                f"got {self.image_position!r}; fix it in the checkpoint's config.json"
            )
        if self.open_clip_config is not None:
            patches = num_patches(self.open_clip_config)
            if self.image_seq_len is None:
                self.image_seq_len = patches
            elif self.image_seq_len != patches:
                raise ValueError(
                    f"image_seq_len ({self.image_seq_len}) must equal the vision tower's patch count ({patches})"
                )
        super().__post_init__(**kwargs)


def merge_image_features(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    image_features: torch.Tensor,
    img_patch_id: int,
) -> torch.Tensor:
    """Write image features over the embeddings of the ``img_patch_id`` tokens, in one vectorised step.

    ``image_features`` is ``[images, patches, hidden]``, images in reading order:
    the first sample's images first, each sample's in the order they appear. A
    batch may mix samples with zero, one or several images. Returns a new tensor;
    gradients flow into both inputs.

    Raises ``ValueError`` naming both counts when the patch tokens in
    ``input_ids`` do not match ``images * patches``.
    """
    patch_mask = input_ids == img_patch_id
    num_tokens = int(patch_mask.sum())
    num_images, patches = image_features.shape[:2]
    if num_tokens != num_images * patches:
        raise ValueError(
            f"the batch has {num_tokens} image patch tokens, but {num_images} images x {patches} patches = "
            f"{num_images * patches} image features were supplied; every image must appear in the text as "
            f"<|img_start|> + {patches} x <|img_patch|> + <|img_end|>, one per supplied image"
        )
    hidden = inputs_embeds.shape[-1]
    features = image_features.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype).reshape(-1, hidden)
    # Copy whole rows by position: masked_scatter over an element mask is as fast forward but its
    # backward walks the [batch, seq, hidden] mask again (2x slower than a per-sample loop in training).
    positions = patch_mask.to(inputs_embeds.device).flatten().nonzero().squeeze(1)
    return inputs_embeds.reshape(-1, hidden).index_copy(0, positions, features).view_as(inputs_embeds)


class YuRenForCausalLM(LlamaForCausalLM):
    """LLaMA causal LM that also reads images (``pixel_values``) through an open_clip vision tower."""

    config_class = YuRenConfig
    # The tower runs as one unit; device_map must not split it across devices.
    _no_split_modules = ["LlamaDecoderLayer", "PatchFeatureTower"]

    def __init__(self, config: YuRenConfig):
        if config.open_clip_config is None or config.img_patch_token_id is None:
            raise ValueError(
                "YuRenConfig needs open_clip_config and the image token ids; assemble a new model with "
                "yuren_core.loading.build_fused_model, or load a saved one with load_model"
            )
        super().__init__(config)
        self.vision_tower = build_vision_tower(config.open_clip_config)
        depth = len(self.vision_tower.transformer.resblocks)
        if not -depth <= config.vision_feature_layer < depth:
            raise ValueError(
                f"vision_feature_layer {config.vision_feature_layer} is out of range for a {depth}-block vision tower"
            )
        self.mm_projector = nn.Linear(vision_width(config.open_clip_config), config.hidden_size)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # open_clip's tower holds bare parameters the generic init does not know; use open_clip's own scheme.
        if module is getattr(self, "vision_tower", None):
            scale = module.transformer.width**-0.5
            init.normal_(module.class_embedding, std=scale)
            init.normal_(module.positional_embedding, std=scale)
            if module.proj is not None:
                init.normal_(module.proj, std=scale)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` ``[images, 3, H, W]`` -> projected features ``[images, image_seq_len, hidden]``."""
        tower_dtype = self.vision_tower.conv1.weight.dtype
        tower_device = self.vision_tower.conv1.weight.device
        features = self.vision_tower(
            pixel_values.to(device=tower_device, dtype=tower_dtype), layer=self.config.vision_feature_layer
        )
        projector_weight = self.mm_projector.weight
        return self.mm_projector(features.to(device=projector_weight.device, dtype=projector_weight.dtype))

    def embed_with_images(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings of ``input_ids`` with each image's features in place of its patch tokens."""
        inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is None:
            hidden = self.config.hidden_size
            image_features = inputs_embeds.new_zeros(0, self.config.image_seq_len, hidden)
        else:
            image_features = self.encode_images(pixel_values)
        return merge_image_features(inputs_embeds, input_ids, image_features, self.config.img_patch_token_id)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        r"""As ``LlamaForCausalLM.forward``, plus ``pixel_values`` ``[images, 3, H, W]``.

        Images are encoded only while the cache is empty (the first forward of a
        generation, or any forward without a cache): afterwards the cache already
        holds their effect and ``pixel_values`` is ignored. On that first forward
        the number of images must match the patch tokens in ``input_ids``.
        """
        first_forward = cache is None or cache.get_seq_length() == 0
        if first_forward and inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or inputs_embeds without images)")
            inputs_embeds = self.embed_with_images(input_ids, pixel_values)
            input_ids = None
        elif first_forward and pixel_values is not None:
            raise ValueError("pixel_values need input_ids to locate the image tokens; do not pass inputs_embeds")
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Pass ``pixel_values`` on the first generation step only (later steps read the KV cache)."""
        model_inputs = super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration, **kwargs)
        # Without a cache every step re-reads the whole sequence, images included.
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["pixel_values"] = pixel_values
        return model_inputs


AutoConfig.register(YuRenConfig.model_type, YuRenConfig, exist_ok=True)
AutoModelForCausalLM.register(YuRenConfig, YuRenForCausalLM, exist_ok=True)
