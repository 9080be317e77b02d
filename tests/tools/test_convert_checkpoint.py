"""convert-checkpoint: upstream's release becomes a self-contained YuRen checkpoint computing the same logits."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file
from upstream_release import PATCHES, reference_logits, wrong_shape_projector

from convert_checkpoint.__main__ import main
from yuren_core.chatml import image_block
from yuren_core.loading import load_model
from yuren_core.vocab import load_tokenizer, special_ids

PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
TEXT = "帮我描述一下这张图片。Describe it in English, please!"


@pytest.fixture(scope="module")
def converted(release_dir, release_clip_dir, tmp_path_factory):
    """The release converted while its CLIP tower is reachable; then the tower is moved away."""
    work = tmp_path_factory.mktemp("convert")
    clip = work / "clip"
    shutil.copytree(release_clip_dir, clip)
    release = work / "release"
    shutil.copytree(release_dir, release)
    config = json.loads((release / "config.json").read_text())
    (release / "config.json").write_text(json.dumps({**config, "mm_vision_tower": str(clip)}))

    tokenizer = load_tokenizer(str(release))
    ids = special_ids(tokenizer)
    text = tokenizer.encode(TEXT, add_special_tokens=False)
    block = image_block(ids, PATCHES)
    input_ids = torch.tensor([[ids.im_start, *text, *block, ids.im_end, *block]])
    reference = reference_logits(release, input_ids, PIXELS)

    main([str(release), "--output", str(work / "out")])
    shutil.move(clip, work / "clip-moved-away")
    return work / "out", release, input_ids, reference


def test_converted_checkpoint_is_self_contained_and_gives_upstreams_logits(converted):
    out, _, input_ids, reference = converted
    assert json.loads((out / "config.json").read_text())["model_type"] == "yuren"
    assert not list(out.glob("*.bin"))
    keys = set(load_file(out / "model.safetensors"))
    assert {"mm_projector.weight", "vision_tower.conv1.weight"} <= keys and "model.mm_projector.weight" not in keys
    model, _, processor = load_model(out)
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=PIXELS).logits
    assert (logits - reference).abs().max() <= 1e-4
    assert model.config.image_position == "after_text"
    assert processor.image_size == (32, 32)
    assert model.generation_config.eos_token_id == [special_ids(load_tokenizer(str(out))).im_end, 2]


def test_converted_tokenizer_encodes_as_the_release(converted):
    out, release, _, _ = converted
    slow, fast = load_tokenizer(str(release)), load_tokenizer(str(out))
    assert fast.encode(TEXT) == slow.encode(TEXT)
    assert special_ids(fast) == special_ids(slow)
    assert special_ids(fast).pad == 0


def test_failed_conversion_leaves_no_output(release_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(release_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "mm_vision_tower": str(tmp_path / "gone")}))
    with pytest.raises(SystemExit) as exit_info:
        main([str(broken), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "mm_vision_tower" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["broken"]


def test_refuses_to_overwrite_without_the_flag(release_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main([str(release_dir), "--output", str(tmp_path / "out")])
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_wrong_shape_projector_is_one_line_and_exit_2(release_dir, tmp_path, capsys):
    release = wrong_shape_projector(release_dir, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(release), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    error = lines[-1]
    assert error.startswith("convert-checkpoint: error: ") and "Traceback" not in "".join(lines)
    assert re.search(r"model\.mm_projector\.weight has shape \[\d+, 32\] but config.json \(mm_hidden_size 64", error)
    assert not (tmp_path / "out").exists()
