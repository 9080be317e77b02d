"""Quantizing on load reads the checkpoint without a memory map, and loads exactly what the mapped load did."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from yuren_core.loading import load_model, quantization_config, unmapped_weights
from yuren_core.quantized import saved_quantization


def test_8bit_load_without_a_memory_map_matches_the_mapped_load(fused_model_dir):
    model, _, _ = load_model(fused_model_dir, load_8bit=True)
    mapped = AutoModelForCausalLM.from_pretrained(
        fused_model_dir,
        dtype=torch.float16,
        quantization_config=quantization_config(load_8bit=True, load_4bit=False, dtype=torch.float16),
    )
    ours, theirs = model.state_dict(), mapped.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert ours["model.layers.0.mlp.up_proj.weight"].dtype == torch.int8
    assert model.generation_config.to_dict() == mapped.generation_config.to_dict()
    assert saved_quantization(model.config) == 8


def test_unmapped_weights_reads_shards_and_declines_other_formats(fused_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(fused_model_dir)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    with unmapped_weights(str(tmp_path / "sharded")) as weights:
        assert weights.keys() == model.state_dict().keys()
        name = "model.layers.0.self_attn.q_proj.weight"
        assert torch.equal(weights[name][...], model.state_dict()[name])
    with unmapped_weights(str(tmp_path / "nowhere")) as weights:
        assert weights is None


def test_unknown_saved_quantization_is_refused():
    class Config:
        quantization_config = {"quant_method": "gptq", "bits": 4}

    with pytest.raises(ValueError, match="not bitsandbytes"):
        saved_quantization(Config())
