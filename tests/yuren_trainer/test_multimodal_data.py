"""Image data for stages 2 and 3: bad inputs named by record and file, image blocks never cut, an image on every rank."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image
from trainer_helpers import CPU_FLAGS, write_json

from yuren_core.chatml import image_block
from yuren_core.constants import IGNORE_INDEX
from yuren_core.records import read_conversations
from yuren_core.vision import ImageProcessor
from yuren_core.vocab import special_ids
from yuren_trainer.collator import PackedCollator, PaddingCollator
from yuren_trainer.data import image_position_of, load_sft_dataset
from yuren_trainer.images import FolderImageLoader, ImageFileError, ImageInEveryBatch, check_images

SEQ_LEN = 16  # the tiny tower: 32 x 32 pixels in 8 x 8 patches


def png_bytes(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def record(image, question="What colour is it?", answer="red", *, id="r"):
    """A LLaVA record: ``image`` is one path, or a list of paths (the ``images`` field), one ``<image>`` each."""
    images = image if isinstance(image, list) else [image]
    return {
        "id": id,
        ("images" if isinstance(image, list) else "image"): image,
        "conversations": [
            {"from": "human", "value": "<image>\n" * len(images) + question},
            {"from": "gpt", "value": answer},
        ],
    }


def records_file(path, records):
    """A JSON list written one record per line, so record i sits on line i + 2."""
    path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n")
    return path


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.png").write_bytes(png_bytes())
    return folder


def test_each_unusable_image_is_reported_with_its_record_and_file(image_folder, tmp_path):
    (image_folder / "notes.png").write_text("these are notes, not pixels")
    (image_folder / "cut.png").write_bytes(png_bytes(size=(64, 64))[:-30])
    (image_folder / "huge.png").write_bytes(png_bytes(size=(200, 100)))
    path = records_file(
        tmp_path / "llava.json",
        [
            record("good.png"),
            record("missing.png"),
            record("notes.png"),
            record("cut.png"),
            record(["good.png", "huge.png"]),
        ],
    )

    with pytest.raises(ImageFileError) as error:
        check_images(read_conversations(path), image_folder, max_pixels=10_000)
    message = str(error.value)
    assert message.startswith("4 unusable image(s)")
    assert f"{path}:3 (record 1): image 'missing.png' ({image_folder / 'missing.png'}): no such file" in message
    assert f"{path}:4 (record 2): image 'notes.png'" in message and "cannot be decoded as an image" in message
    assert f"{path}:5 (record 3): image 'cut.png'" in message
    assert f"{path}:6 (record 4): image 'huge.png'" in message and "200x100 = 20,000 pixels" in message
    assert "good.png" not in message


def test_good_images_pass_and_each_file_is_checked_once(image_folder, tmp_path):
    path = write_json(tmp_path / "llava.json", [record("good.png"), record("good.png", answer="still red")])
    assert check_images(read_conversations(path), image_folder, max_pixels=10_000) == 1


def test_a_file_broken_past_its_header_is_named_when_loaded(image_folder, tokenizer):
    (image_folder / "broken.jpg").write_bytes(jpeg_bytes()[:400])
    processor = ImageProcessor({"size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3})
    loader = FolderImageLoader(processor, image_folder)
    assert loader(["good.png", "good.png"]).shape == (2, 3, 32, 32)
    with pytest.raises(ImageFileError, match=r"image 'broken.jpg' \(.*broken.jpg\)"):
        loader(["good.png", "broken.jpg"])


def test_image_block_that_would_not_fit_is_dropped_and_counted_never_cut(tokenizer, tmp_path):
    long_system = {"from": "system", "value": "You describe pictures. " * 20}
    fits = record("a.png", id="fits")
    pushed_out = {**record("b.png", id="pushed"), "conversations": [long_system, *record("b.png")["conversations"]]}
    cut_after_image = record("c.png", answer="a very long answer that goes on and on " * 10, id="long")
    path = write_json(tmp_path / "llava.json", [fits, pushed_out, cut_after_image])

    dataset, stats = load_sft_dataset(path, tokenizer, max_length=64, image_seq_len=SEQ_LEN, cache_dir=tmp_path / "c")
    assert (stats.kept, stats.dropped_image_cut, stats.truncated) == (2, 1, 1)
    assert dataset["images"] == [["a.png"], ["c.png"]]
    ids = special_ids(tokenizer)
    for row in dataset["input_ids"]:
        start = row.index(ids.img_start)
        assert row[start : start + SEQ_LEN + 2] == image_block(ids, SEQ_LEN)


def run_multimodal_sft(*flags):
    from yuren_trainer.multimodal_sft import main

    main([*flags, *CPU_FLAGS])


@pytest.mark.parametrize(
    ("records", "extra_flags", "expected"),
    [
        (
            [record("good.png"), {**record("good.png"), "conversations": [
                {"from": "human", "value": "<image> and <image>: which is brighter?"}, {"from": "gpt", "value": "the first"}
            ]}],
            [],
            "{path}:3 (record 1): the conversation has 2 image placeholder(s) but names 1 image path(s)",
        ),
        ([record("good.png"), record("gone.png")], [], "{path}:3 (record 1): image 'gone.png'"),
        ([record("good.png")], ["--max_image_pixels", "100"], "{path}:2 (record 0): image 'good.png'"),
    ],
    ids=["placeholder-count", "missing-file", "pixel-limit"],
)  # fmt: skip
def test_bad_image_data_stops_stage3_before_the_model_loads(
    fused_model_dir, image_folder, tmp_path, capsys, records, extra_flags, expected
):
    path = records_file(tmp_path / "llava.json", records)
    with pytest.raises(SystemExit) as exit_info:
        run_multimodal_sft(
            "--model_name_or_path", str(fused_model_dir), "--train_file", str(path),
            "--image_folder", str(image_folder), "--output_dir", str(tmp_path / "out"),
            "--data_cache_dir", str(tmp_path / "cache"), *extra_flags,
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected.format(path=path) in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_stage3_needs_an_image_folder(fused_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_multimodal_sft("--model_name_or_path", str(fused_model_dir), "--train_file", "x.json", "--output_dir", "o")
    assert exit_info.value.code == 2
    assert "--image_folder is required" in capsys.readouterr().err


def test_stage3_refuses_a_text_model_without_a_projector_file(prepared_base, image_folder, tmp_path, capsys):
    path = write_json(tmp_path / "llava.json", [record("good.png")])
    with pytest.raises(SystemExit) as exit_info:
        run_multimodal_sft(
            "--model_name_or_path", str(prepared_base), "--train_file", str(path),
            "--image_folder", str(image_folder), "--output_dir", str(tmp_path / "out"),
        )  # fmt: skip
    assert exit_info.value.code == 2
    assert "is a 'llama' model, not a YuRen (image + text) checkpoint" in capsys.readouterr().err


def test_stage2_refuses_a_model_that_is_already_fused(fused_model_dir, tiny_clip_id, image_folder, tmp_path, capsys):
    from yuren_trainer.clip_sft import main

    path = write_json(tmp_path / "captions.json", [record("good.png", answer="A red rectangle.")])
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--model_name_or_path", str(fused_model_dir), "--clip_model", tiny_clip_id,
                "--train_file", str(path), "--image_folder", str(image_folder),
                "--output_dir", str(tmp_path / "out"), "--data_cache_dir", str(tmp_path / "cache"), *CPU_FLAGS,
            ]
        )  # fmt: skip
    assert exit_info.value.code == 2
    assert "is already a YuRen model" in capsys.readouterr().err


def text_rows(tokenizer):
    from yuren_core.chatml import render

    conversations = [
        [{"from": "human", "value": "Count to three."}, {"from": "gpt", "value": "One, two, three."}],
        [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！有什么可以帮你？"}],
    ]
    rows = []
    for conversation in conversations:
        rendered = render(tokenizer, conversation)
        n = len(rendered.input_ids)
        rows.append({"input_ids": rendered.input_ids, "labels": rendered.labels, "images": [], "seq_lengths": [n]})
    return rows


@pytest.mark.parametrize("collator_class", [PaddingCollator, PackedCollator])
def test_a_text_only_batch_runs_the_tower_and_projector_without_changing_loss_or_gradients(
    fused_model_dir, tokenizer, collator_class
):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fused_model_dir)
    ids = special_ids(tokenizer)
    plain = collator_class(ids.pad)
    wrapped = ImageInEveryBatch(plain, image_block=image_block(ids, SEQ_LEN), image_size=(32, 32))
    rows = text_rows(tokenizer)

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    batch = wrapped(rows)
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert batch["input_ids"].shape[0] == len(rows) + 1
    assert (batch["labels"][-1] == IGNORE_INDEX).all()

    tower_calls = []
    model.vision_tower.register_forward_hook(lambda *args: tower_calls.append(1))
    loss, grads = loss_and_grads(batch)
    assert tower_calls, "the vision tower did not run on the text-only batch"
    assert torch.count_nonzero(grads["mm_projector.weight"]) == 0
    expected_loss, expected_grads = loss_and_grads(plain(rows))
    torch.testing.assert_close(loss, expected_loss)
    assert set(expected_grads) < set(grads)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7)


def test_a_batch_with_images_passes_through_unchanged(tokenizer, image_folder):
    ids = special_ids(tokenizer)
    processor = ImageProcessor({"size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3})
    plain = PaddingCollator(ids.pad, image_loader=FolderImageLoader(processor, image_folder))
    wrapped = ImageInEveryBatch(plain, image_block=image_block(ids, SEQ_LEN), image_size=(32, 32))
    rows = text_rows(tokenizer)
    block = image_block(ids, SEQ_LEN)
    rows.append({"input_ids": block, "labels": [IGNORE_INDEX] * len(block), "images": ["good.png"]})
    batch, expected = wrapped(rows), plain(rows)
    # Nothing added, nothing changed: the image already in the batch is all it needs.
    assert batch.keys() == expected.keys()
    assert all(torch.equal(batch[key], expected[key]) for key in expected)
    assert batch["input_ids"].shape[0] == len(rows) and batch["pixel_values"].shape[0] == 1


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--projector_path", "nowhere.safetensors"], "--projector_path nowhere.safetensors: no such file"),
        (
            ["--projector_path", __file__, "--use_lora", "True", "--lora_config", "qlora.json"],
            "it cannot start from --projector_path",
        ),
        (
            ["--clip_model", "local-dir:/missing"],
            "--clip_model local-dir:/missing: /missing holds no open_clip_config.json; pass a directory",
        ),
        (["--clip_model", "ViT-L-14"], "--clip_model ViT-L-14: use 'hf-hub:org/repo' or 'local-dir:/path/to/dir'"),
    ],
    ids=["missing-projector", "lora-with-projector", "missing-clip-dir", "clip-without-schema"],
)
def test_stage3_start_flags_are_checked_when_parsed(prepared_base, image_folder, capsys, flags, expected):
    with pytest.raises(SystemExit) as exit_info:
        run_multimodal_sft(
            "--model_name_or_path", str(prepared_base), "--train_file", "x.json",
            "--image_folder", str(image_folder), "--output_dir", "o", *flags,
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m yuren_trainer.multimodal_sft: error: ") and expected in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("values", "expected", "counts"),
    [
        (["<image>\nWhat?", "<image>\nAnd?", "Why?\n<image>"], "before_text", (2, 1)),
        (["Why?\n<image>", "Who? <image>", "<image>\nWhat?"], "after_text", (1, 2)),
        # A tie, and turns that count for neither (text on both sides, no text), keep the default.
        (["<image> a", "b <image>", "c <image> d", "<image>", "no image"], "after_text", (1, 1)),
    ],
)
def test_stage3_records_where_its_data_puts_images(tmp_path, values, expected, counts):
    records = [
        {
            **({"image": "x.png"} if "<image>" in v else {}),
            "conversations": [{"from": "human", "value": v}, {"from": "gpt", "value": "ok"}],
        }
        for v in values
    ]
    path = write_json(tmp_path / "data.json", records)
    position, found = image_position_of(read_conversations(path), default="after_text")
    assert position == expected
    assert (found["before_text"], found["after_text"]) == counts


def test_stage3_writes_the_recorded_position_into_the_config(tmp_path):
    from yuren_core.modeling import YuRenConfig
    from yuren_trainer.multimodal_sft import record_image_position

    turn = [{"from": "human", "value": "What colour is it?\n<image>"}, {"from": "gpt", "value": "red"}]
    path = write_json(tmp_path / "data.json", [{"image": "x.png", "conversations": turn}])
    config = YuRenConfig()
    assert config.image_position == "before_text"
    record_image_position(config, str(path))
    assert config.image_position == "after_text"
