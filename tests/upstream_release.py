"""A tiny checkpoint in exactly the layout of upstream's release (``pleisto/yuren-baichuan-7b``), and its reference forward.

The layout is what upstream's code (transformers 4.30) wrote: ``config.json``
with ``model_type: "multimodal_llama"`` and the ``mm_*`` fields, LLaMA weights
plus ``model.mm_projector.*`` in ``pytorch_model.bin`` (with the rotary
``inv_freq`` buffers 4.30 still saved), the slow tokenizer's files (no pad
token, ``<|im_start|>``/``<|im_end|>`` as additional special tokens, the image
tokens in ``added_tokens.json``), and no vision weights: ``mm_vision_tower``
names a transformers ``CLIPModel`` directory (text and vision towers, plus a
``CLIPImageProcessor`` config), as the hub's CLIP repos are.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from yuren_core.constants import IM_END, IM_START, IMG_END, IMG_PATCH, IMG_START

VISION_WIDTH = 64
IMAGE_SIZE = 32
PATCH_SIZE = 8
PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2
SELECT_LAYER = -2
# The order upstream's code added them: ChatML tokens in prepare_base_model, image tokens in training.
ADDED_TOKENS = (IM_START, IM_END, IMG_PATCH, IMG_START, IMG_END)
WEIGHT_FORMATS = ("bin", "sharded_bin", "safetensors")


def build_clip(out: Path, *, hidden_act: str = "gelu", seed: int = 0, vision_width: int = VISION_WIDTH) -> Path:
    """Save a tiny transformers ``CLIPModel`` (both towers) and its ``CLIPImageProcessor`` config to ``out``."""
    config = CLIPConfig(
        text_config=dict(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=4 * vision_width,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            hidden_act=hidden_act,
        ),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out)
    processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=3
    )
    processor.save_pretrained(out)
    return out


def write_slow_tokenizer(base: Path, out: Path) -> dict[str, int]:
    """Write the files a transformers 4.30 slow ``LlamaTokenizer`` saved after upstream's token additions."""
    shutil.copy(base / "tokenizer.model", out / "tokenizer.model")
    size = spm.SentencePieceProcessor(model_file=str(base / "tokenizer.model")).get_piece_size()
    added = {token: size + i for i, token in enumerate(ADDED_TOKENS)}
    (out / "added_tokens.json").write_text(json.dumps(added, indent=2))

    def special(content: str) -> dict:
        return {
            "__type": "AddedToken",
            "content": content,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
        }

    special_map = {
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": special("<s>"),
        "eos_token": special("</s>"),
        "unk_token": special("<unk>"),
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": special("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": special("</s>"),
        "legacy": None,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": special("<unk>"),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return added


def build_release(
    base: Path, clip: Path, out: Path, *, weights: str = "bin", seed: int = 0, saved_tower: Path | None = None
) -> Path:
    """Write a tiny release-layout checkpoint from the tiny LLaMA ``base`` and the CLIP directory ``clip``.

    With ``saved_tower`` (a CLIP directory) the checkpoint also holds that
    tower's vision weights, as upstream's ``initialize_vision_modules`` and
    ``save_pretrained`` wrote them outside FSDP: ``model.vision_tower.`` +
    ``CLIPVisionModel``'s names, the ``position_ids`` buffer 4.30 saved included.
    """
    out.mkdir(parents=True)
    added = write_slow_tokenizer(base, out)
    llama = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    rows = -(-(max(added.values()) + 1) // 128) * 128
    llama.resize_token_embeddings(rows, mean_resizing=False)
    projector = nn.Linear(VISION_WIDTH, llama.config.hidden_size)
    state = dict(llama.state_dict())
    state["model.mm_projector.weight"] = projector.weight.detach().clone()
    state["model.mm_projector.bias"] = projector.bias.detach().clone()
    head_dim = llama.config.hidden_size // llama.config.num_attention_heads
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for layer in range(llama.config.num_hidden_layers):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    if saved_tower is not None:
        # transformers 4.30's CLIPVisionModel held these weights under vision_model; today's holds them directly.
        vision = CLIPVisionModel.from_pretrained(saved_tower, dtype=torch.float32)
        state.update({f"model.vision_tower.vision_model.{k}": v.clone() for k, v in vision.state_dict().items()})
        state["model.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(PATCHES + 1)[None]
    write_weights(state, out, weights)

    config = json.loads((base / "config.json").read_text())
    config.update(
        architectures=["MultimodalLlamaForCausalLM"],
        model_type="multimodal_llama",
        vocab_size=rows,
        pad_token_id=0,
        torch_dtype="float32",
        transformers_version="4.30.2",
        max_sequence_length=4096,
        use_mm_proj=True,
        mm_hidden_size=VISION_WIDTH,
        mm_vision_select_layer=SELECT_LAYER,
        mm_vision_tower=str(clip),
    )
    config.pop("dtype", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "transformers_version": "4.30.2"}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return out


def write_weights(state: dict[str, torch.Tensor], out: Path, weights: str) -> None:
    """Save ``state`` as one ``pytorch_model.bin``, two indexed ``.bin`` shards, or ``model.safetensors``."""
    state = {key: value.contiguous() for key, value in state.items()}
    if weights == "bin":
        torch.save(state, out / "pytorch_model.bin")
    elif weights == "sharded_bin":
        keys = sorted(state)
        halves = {
            "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
            "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
        }
        for name, shard_keys in halves.items():
            torch.save({key: state[key] for key in shard_keys}, out / name)
        index = {
            "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
            "weight_map": {key: name for name, shard_keys in halves.items() for key in shard_keys},
        }
        (out / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    elif weights == "safetensors":
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    else:
        raise ValueError(f"unknown weights format {weights!r}")


@torch.no_grad()
def reference_logits(
    release: Path, input_ids: torch.Tensor, pixel_values: torch.Tensor, *, vision_tower: Path | None = None
) -> torch.Tensor:
    """Logits the upstream way: CLIPVisionModel -> select layer -> drop CLS -> projector -> patch positions -> LLaMA.

    The CLIP tower is ``vision_tower`` if given, else the one ``mm_vision_tower`` names.
    """
    config = json.loads((release / "config.json").read_text())
    state = torch.load(release / "pytorch_model.bin", weights_only=True)
    vision = CLIPVisionModel.from_pretrained(vision_tower or config["mm_vision_tower"], dtype=torch.float32).eval()
    llama_config = LlamaConfig(**{k: v for k, v in config.items() if not k.startswith("mm_") and k != "model_type"})
    llama = LlamaForCausalLM(llama_config).eval()
    not_llama = ("mm_projector", "inv_freq", "vision_tower")
    llama.load_state_dict({k: v for k, v in state.items() if not any(part in k for part in not_llama)})
    projector = nn.Linear(config["mm_hidden_size"], llama_config.hidden_size)
    projector.load_state_dict({"weight": state["model.mm_projector.weight"], "bias": state["model.mm_projector.bias"]})

    hidden = vision(pixel_values, output_hidden_states=True).hidden_states[config["mm_vision_select_layer"]]
    features = projector(hidden[:, 1:])
    embeds = llama.get_input_embeddings()(input_ids).clone()
    tokenizer_added = json.loads((release / "added_tokens.json").read_text())
    image_index = 0
    for row in range(input_ids.shape[0]):
        for start in (input_ids[row] == tokenizer_added[IMG_START]).nonzero().flatten().tolist():
            embeds[row, start + 1 : start + 1 + features.shape[1]] = features[image_index]
            image_index += 1
    return llama(inputs_embeds=embeds).logits


def edited_release(release_dir, tmp_path, **changes):
    """A copy of the release with ``config.json`` fields changed (``None`` removes one)."""
    copy = tmp_path / "edited"
    shutil.copytree(release_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def wrong_shape_projector(release: Path, tmp_path: Path) -> Path:
    """A copy of the release whose projector maps 32-wide features, where config.json says 64."""
    copy = edited_release(release, tmp_path)
    state = torch.load(copy / "pytorch_model.bin", weights_only=True)
    state["model.mm_projector.weight"] = torch.zeros(state["model.mm_projector.weight"].shape[0], 32)
    torch.save(state, copy / "pytorch_model.bin")
    return copy
