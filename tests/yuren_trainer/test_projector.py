"""The projector file stage 2 writes and stage 3 reads: from sharded checkpoints, refused at the wrong shape."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from yuren_trainer.arguments import UsageError
from yuren_trainer.projector import PROJECTOR_FILE, load_projector, save_projector


def test_the_projector_is_collected_from_every_shard(fused_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fused_model_dir)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 1 and not (tmp_path / "model.safetensors").exists()

    path = save_projector(tmp_path)
    assert path == tmp_path / PROJECTOR_FILE
    saved = load_file(path)
    expected = {f"mm_projector.{k}": v for k, v in model.mm_projector.state_dict().items()}
    assert saved.keys() == expected.keys() == {"mm_projector.weight", "mm_projector.bias"}
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


def test_a_projector_of_another_shape_is_refused_and_the_right_one_loads(tmp_path):
    model = SimpleNamespace(mm_projector=nn.Linear(8, 16))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"mm_projector.weight": torch.zeros(16, 4), "mm_projector.bias": torch.zeros(16)}, wrong)
    before = model.mm_projector.weight.clone()
    with pytest.raises(UsageError) as refused:
        load_projector(model, wrong)
    assert str(refused.value) == (
        f"--projector_path {wrong} holds {{'bias': (16,), 'weight': (16, 4)}}, but this model's projector needs "
        "{'weight': (16, 8), 'bias': (16,)}: was it trained with another stage-1 model or --clip_model?"
    )
    assert torch.equal(model.mm_projector.weight, before)

    right = tmp_path / "right.safetensors"
    weights = {"mm_projector.weight": torch.randn(16, 8), "mm_projector.bias": torch.randn(16)}
    save_file(weights, right)
    load_projector(model, right)
    assert torch.equal(model.mm_projector.weight, weights["mm_projector.weight"])
    assert torch.equal(model.mm_projector.bias, weights["mm_projector.bias"])


def test_image_flags_of_stage_2_reach_serving(prepared_base, tiny_clip_id, tmp_path):
    from PIL import Image
    from transformers import HfArgumentParser

    from webui.engine import ModelBackend
    from yuren_core.vision import ImageProcessor
    from yuren_core.vocab import load_tokenizer
    from yuren_trainer.arguments import VisionTowerArguments
    from yuren_trainer.models import assemble_fused_model

    (vision_args,) = HfArgumentParser(VisionTowerArguments).parse_args_into_dataclasses(
        ["--clip_model", tiny_clip_id, "--image_pad_to_square", "True", "--vision_feature_layer", "-1"]
    )
    model = assemble_fused_model(str(prepared_base), vision_args, SimpleNamespace(deepspeed=None))
    model.save_pretrained(tmp_path)
    load_tokenizer(str(prepared_base)).save_pretrained(tmp_path)

    backend = ModelBackend.from_pretrained(tmp_path)
    served = backend.model
    assert served.config.image_pad_to_square is True and served.config.vision_feature_layer == -1
    wide = Image.new("RGB", (64, 16), (250, 10, 10))
    pixels = backend.image_processor(wide)
    config = served.config
    padded = ImageProcessor(config.image_preprocess_config, pad_to_square=True)(wide)
    cropped = ImageProcessor(config.image_preprocess_config, pad_to_square=False)(wide)
    assert torch.equal(pixels, padded) and not torch.equal(pixels, cropped)
    with torch.no_grad():
        features = served.encode_images(pixels)
        last = served.mm_projector(served.vision_tower(pixels, layer=-1))
        penultimate = served.mm_projector(served.vision_tower(pixels, layer=-2))
    assert torch.equal(features, last) and not torch.equal(features, penultimate)
