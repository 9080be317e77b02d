"""``YuRenForCausalLM`` for vLLM: vLLM's LLaMA plus YuRen's vision tower and projector.

A prompt carries each image as ``<|img_start|>`` + ``image_seq_len`` x
``<|img_patch|>`` + ``<|img_end|>``, exactly as :func:`yuren_core.chatml.render`
and the checkpoint's chat template write it, so the ids vLLM runs are the ids
the model was trained on. The multimodal processor finds each block, and the
projected patch features replace the embeddings of its ``<|img_patch|>``
tokens; the start and end tokens keep their own embeddings, as in training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)
from vllm.sequence import IntermediateTensors

from yuren_core.chatml import image_block
from yuren_core.constants import IMG_END, IMG_PATCH, IMG_START
from yuren_core.modeling import YuRenConfig
from yuren_core.vision import ImageProcessor, build_vision_tower, vision_width
from yuren_core.vocab import special_ids


class YuRenProcessingInfo(BaseProcessingInfo):
    """What vLLM's multimodal processor needs to know about a YuRen checkpoint."""

    def get_hf_config(self) -> YuRenConfig:
        return self.ctx.get_hf_config(YuRenConfig)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.get_hf_config().image_seq_len}

    def image_processor(self) -> ImageProcessor:
        return ImageProcessor.from_config(self.get_hf_config())

    def image_block(self) -> list[int]:
        return image_block(special_ids(self.get_tokenizer()), self.get_hf_config().image_seq_len)


class YuRenDummyInputsBuilder(BaseDummyInputsBuilder[YuRenProcessingInfo]):
    """Prompts and images vLLM profiles memory with."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        block = IMG_START + IMG_PATCH * self.info.get_hf_config().image_seq_len + IMG_END
        return block * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        height, width = self.info.image_processor().image_size
        overrides = mm_options.get("image") if mm_options else None
        images = self._get_dummy_images(
            width=width, height=height, num_images=mm_counts.get("image", 0), overrides=overrides
        )
        return {"image": images}


class YuRenMultiModalProcessor(BaseMultiModalProcessor[YuRenProcessingInfo]):
    """Images -> ``pixel_values`` with YuRen's own preprocessing; each image block in the prompt is its placeholder."""

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        images = hf_data.get("images", [])
        return BatchFeature({"pixel_values": self.info.image_processor()(list(images))})

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {"pixel_values": MultiModalFieldConfig.batched("image")}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        # The prompt already holds the full block (the renderer and the chat template write it), so the
        # "replacement" is the block itself; it only tells vLLM where the image's features go.
        block = self.info.image_block()
        patch_id = self.info.get_hf_config().img_patch_token_id
        return [
            PromptReplacement(
                modality="image",
                target=block,
                replacement=PromptUpdateDetails.select_token_id(block, patch_id),
            )
        ]


@MULTIMODAL_REGISTRY.register_processor(
    YuRenMultiModalProcessor, info=YuRenProcessingInfo, dummy_inputs=YuRenDummyInputsBuilder
)
class YuRenForCausalLM(nn.Module, SupportsMultiModal, SupportsPP):
    """YuRen on vLLM: ``language_model`` is vLLM's LLaMA; ``vision_tower`` and ``mm_projector`` encode images."""

    packed_modules_mapping = LlamaForCausalLM.packed_modules_mapping
    # Checkpoint keys are those of transformers' YuRenForCausalLM (a LlamaForCausalLM subclass).
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={"model.": "language_model.model.", "lm_head.": "language_model.lm_head."}
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        # The chat template writes each image's block itself (it reads {"type": "image"} parts).
        if modality.startswith("image"):
            return None
        raise ValueError(f"YuRen reads images only, not {modality}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: YuRenConfig = vllm_config.model_config.hf_config
        self.config = config
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = build_vision_tower(config.open_clip_config)
            self.mm_projector = nn.Linear(vision_width(config.open_clip_config), config.hidden_size)
        with self._mark_language_model(vllm_config):
            self.language_model = LlamaForCausalLM(
                vllm_config=vllm_config, prefix=maybe_prefix(prefix, "language_model")
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        weight = self.vision_tower.conv1.weight
        features = self.vision_tower(
            pixel_values.to(device=weight.device, dtype=weight.dtype), layer=self.config.vision_feature_layer
        )
        projected = self.mm_projector(features.to(self.mm_projector.weight.dtype))
        return list(projected.unbind(0))

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
