"""The transformers seam yuren_core relies on (yuren_core.transformers_compat): it fails here, loudly, when transformers
changes it."""

from __future__ import annotations

import inspect

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.conversion_mapping import get_model_conversion_mapping

from yuren_core.transformers_compat import TRANSFORMERS_MAJOR, save_under_own_names

OWN, OTHER = "model.norm.weight", "model.final_norm.weight"


def test_transformers_is_the_major_version_the_seam_was_written_for():
    assert int(transformers.__version__.split(".")[0]) == TRANSFORMERS_MAJOR


def test_the_conversion_mapping_takes_what_save_under_own_names_passes():
    parameters = inspect.signature(get_model_conversion_mapping).parameters
    assert list(parameters)[0] == "model" and "hf_quantizer" in parameters


@pytest.fixture
def loaded_from_another_layout(tmp_path):
    """A tiny LLaMA loaded with ``key_mapping`` from a checkpoint that names its final norm ``OTHER``."""
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "saved")
    weights = tmp_path / "saved" / "model.safetensors"
    state = load_file(weights)
    state[OTHER] = state.pop(OWN)
    save_file(state, weights, metadata={"format": "pt"})
    return LlamaForCausalLM.from_pretrained(tmp_path / "saved", key_mapping={r"^model\.final_norm\.": "model.norm."})


def test_a_model_loaded_with_a_key_mapping_saves_in_the_layout_it_came_from(loaded_from_another_layout, tmp_path):
    # What makes the seam needed: if this fails, transformers no longer maps the names back and the seam can go.
    loaded_from_another_layout.save_pretrained(tmp_path / "again")
    keys = set(load_file(tmp_path / "again" / "model.safetensors"))
    assert OTHER in keys and OWN not in keys


def test_save_under_own_names_saves_under_the_models_names(loaded_from_another_layout, tmp_path):
    # If transformers renames or stops reading the attribute the seam sets, the saved names stay OTHER here.
    save_under_own_names(loaded_from_another_layout)
    loaded_from_another_layout.save_pretrained(tmp_path / "own")
    saved = load_file(tmp_path / "own" / "model.safetensors")
    assert OWN in saved and OTHER not in saved
    assert torch.equal(saved[OWN], loaded_from_another_layout.model.norm.weight.detach())
