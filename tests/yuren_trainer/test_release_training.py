"""Stages 2 and 3 start from a checkpoint in upstream's released layout (no <|pad|>, tower from mm_vision_tower)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from repo_helpers import REPO
from safetensors.torch import load_file
from trainer_helpers import CPU_FLAGS, write_json

from yuren_core.loading import load_model

pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """LLaVA-format records with small images, of different lengths so batches need padding."""
    folder = tmp_path_factory.mktemp("release-images")
    records = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (40 + 8 * i, 32), rgb).save(folder / f"{name}.png")
        question = "What colour is this?" + " Please answer briefly." * i
        records.append(
            {
                "image": f"{name}.png",
                "conversations": [
                    {"from": "human", "value": f"<image>\n{question}"},
                    {"from": "gpt", "value": f"It is {name}."},
                ],
            }
        )
    return write_json(folder / "llava.json", records * 2), folder


def flags(image_data, output, tmp_path) -> list[str]:
    train_file, folder = image_data
    return [
        "--train_file", str(train_file), "--image_folder", str(folder), "--output_dir", str(output),
        "--per_device_train_batch_size", "3", "--model_max_length", "256", "--max_steps", "2",
        "--learning_rate", "1e-2", "--data_cache_dir", str(tmp_path / "cache"), *CPU_FLAGS,
    ]  # fmt: skip


def release_state(release_dir) -> dict[str, torch.Tensor]:
    return torch.load(release_dir / "pytorch_model.bin", weights_only=True)


def test_stage3_trains_from_the_release(release_dir, image_data, tmp_path):
    from yuren_trainer.multimodal_sft import main

    start, _, _ = load_model(release_dir)
    output = tmp_path / "stage3"
    main(["--model_name_or_path", str(release_dir), *flags(image_data, output, tmp_path)])
    assert json.loads((output / "config.json").read_text())["model_type"] == "yuren"
    after = load_file(output / "model.safetensors")
    before = start.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("vision_tower."))
    assert not torch.equal(after["mm_projector.weight"], before["mm_projector.weight"])
    assert not torch.equal(after["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    trained, _, _ = load_model(output)
    # Stage 3 records where its own data put the images (here before the text), replacing the release's after_text.
    assert trained.config.image_position == "before_text"


def test_stage2_aligns_the_releases_projector_only(release_dir, image_data, tmp_path):
    from yuren_trainer.clip_sft import main

    output = tmp_path / "stage2"
    main(["--model_name_or_path", str(release_dir), *flags(image_data, output, tmp_path)])
    after = load_file(output / "model.safetensors")
    release = release_state(release_dir)
    projector = release.pop("model.mm_projector.weight")
    assert not torch.equal(after["mm_projector.weight"], projector)
    llm = {k: v for k, v in release.items() if "inv_freq" not in k and "mm_projector" not in k}
    assert llm and all(torch.equal(after[k], v) for k, v in llm.items())
    assert set(load_file(output / "mm_projector.safetensors")) == {"mm_projector.weight", "mm_projector.bias"}


def test_stage3_lora_from_the_release_merges_back_into_it(release_dir, image_data, tmp_path):
    from merge_lora.merge import merge
    from yuren_trainer.multimodal_sft import main

    output = tmp_path / "lora"
    lora_config = REPO / "apps" / "yuren_trainer" / "config" / "qlora.json"
    main(
        [
            "--model_name_or_path", str(release_dir), "--use_lora", "True", "--lora_config", str(lora_config),
            *flags(image_data, output, tmp_path),
        ]
    )  # fmt: skip
    merged, _, _ = load_model(merge(str(release_dir), str(output), tmp_path / "merged"))
    release = release_state(release_dir)
    assert not torch.equal(merged.state_dict()["mm_projector.weight"], release["model.mm_projector.weight"])
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[key], release[key])
