"""Stage 2 (projector alignment), as run by the tiny pipeline: only the projector changes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import set_seed

pytestmark = pytest.mark.slow


def test_stage2_trains_the_projector_and_nothing_else(tiny_pipeline):
    from yuren_core.loading import build_fused_model

    recipe, run = tiny_pipeline
    stage2 = load_file(run.stage2 / "model.safetensors")
    stage1 = load_file(run.stage1 / "model.safetensors")
    clip = load_file(run.tiny / "clip" / "open_clip_model.safetensors")
    tower = {f"vision_tower.{k.removeprefix('visual.')}": v for k, v in clip.items() if k.startswith("visual.")}

    projector = {k for k in stage2 if k.startswith("mm_projector.")}
    assert projector == {"mm_projector.weight", "mm_projector.bias"}
    assert set(stage2) == set(stage1) | set(tower) | projector
    for key, value in stage2.items():
        if key in stage1:
            assert torch.equal(value, stage1[key]), f"stage 2 changed the language model's {key}"
        elif key in tower:
            assert torch.equal(value, tower[key]), f"stage 2 changed the vision tower's {key}"

    # The projector the run started from: stage 2 seeds before assembling the fused model.
    set_seed(recipe.seed)
    start, _, _ = build_fused_model(run.stage1, f"local-dir:{run.tiny / 'clip'}", dtype=torch.float32)
    for key in projector:
        initial = start.state_dict()[key]
        assert not torch.equal(stage2[key], initial), f"stage 2 did not train {key}"

    alone = load_file(run.stage2 / "mm_projector.safetensors")
    assert set(alone) == projector
    for key in projector:
        assert torch.equal(alone[key], stage2[key])


def test_stage2_output_loads_for_serving(tiny_pipeline):
    from yuren_core.loading import load_model

    _, run = tiny_pipeline
    model, tokenizer, processor = load_model(run.stage2)
    assert type(model).__name__ == "YuRenForCausalLM"
    assert processor.image_size == (32, 32) and len(tokenizer) <= model.config.vocab_size
