"""The QLoRA settings file: upstream's keys, 4-bit nf4 with double quantization, errors naming file and key."""

from __future__ import annotations

import json
import re

import pytest
import torch
from repo_helpers import REPO

from yuren_trainer.qlora import QLoRAConfigError, base_quantization_config, new_token_ids, read_settings

QLORA_JSON = REPO / "apps" / "yuren_trainer" / "config" / "qlora.json"


def test_the_shipped_settings_are_upstreams_plus_double_quantized_nf4():
    settings = read_settings(QLORA_JSON)
    assert (settings.r, settings.lora_alpha, settings.lora_dropout) == (64, 16, 0.05)
    assert set(settings.lora_target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    config = base_quantization_config(settings, torch.float32)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float32
    assert base_quantization_config(settings, torch.bfloat16).bnb_4bit_compute_dtype == torch.bfloat16
    assert "lm_head" in config.llm_int8_skip_modules


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"r": 64, "lora_rank": 8}, "unknown key(s) ['lora_rank']"),
        ({"r": "64"}, "key 'r' must be int"),
        ({"lora_target_modules": "q_proj"}, "key 'lora_target_modules' must be list"),
        ({"bnb_4bit_quant_type": "int4"}, "'bnb_4bit_quant_type' must be 'nf4' or 'fp4'"),
    ],
)
def test_bad_settings_name_the_file_and_the_key(tmp_path, content, message):
    path = tmp_path / "qlora.json"
    path.write_text(json.dumps(content))
    with pytest.raises(QLoRAConfigError, match=rf"--lora_config {path}: .*{re.escape(message)}"):
        read_settings(path)


def test_the_new_token_rows_are_the_special_tokens(tokenizer):
    ids = new_token_ids(tokenizer)
    assert len(ids) == 6 and tokenizer.convert_ids_to_tokens(ids[0]) == "<|im_start|>"
