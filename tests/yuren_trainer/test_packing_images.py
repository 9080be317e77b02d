"""``--packing True`` with images: one packed forward trains exactly as the padded batch of the same conversations."""

from __future__ import annotations

import torch
from trainer_helpers import llava_records, write_images, write_json

from yuren_core.constants import IGNORE_INDEX
from yuren_core.vision import ImageProcessor
from yuren_core.vocab import special_ids
from yuren_trainer.collator import PackedCollator, PaddingCollator
from yuren_trainer.data import load_sft_dataset
from yuren_trainer.images import FolderImageLoader
from yuren_trainer.packing import pack_rows
from yuren_trainer.segment_attention import use_for_packing


def test_a_packed_batch_with_images_gives_the_padded_loss_and_projector_gradient(fused_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fused_model_dir, dtype=torch.float32)
    write_images(tmp_path / "images")
    path = write_json(tmp_path / "llava.json", llava_records())
    rows, _ = load_sft_dataset(
        path, tokenizer, max_length=512, image_seq_len=model.config.image_seq_len, cache_dir=tmp_path / "cache"
    )
    rows = [dict(row) for row in rows]
    assert [len(row["images"]) for row in rows] == [1, 1, 2, 0]

    pad = special_ids(tokenizer).pad
    loader = FolderImageLoader(ImageProcessor.from_config(model.config), tmp_path / "images")
    padded = PaddingCollator(pad, image_loader=loader)(rows)
    columns = {key: [row[key] for row in rows] for key in ("input_ids", "labels", "images")}
    packed_columns = pack_rows(columns, max_length=sum(len(row["input_ids"]) for row in rows))
    assert len(packed_columns["input_ids"]) == 1
    packed = PackedCollator(pad, image_loader=loader)([{key: packed_columns[key][0] for key in packed_columns}])
    assert packed["pixel_values"].shape[0] == padded["pixel_values"].shape[0] == 4

    def mean_loss_and_projector_grad(batch):
        """Sum of the supervised tokens' losses over their number, and the projector's gradient of it."""
        model.zero_grad()
        logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits
        targets = batch["labels"][:, 1:]
        supervised = int((targets != IGNORE_INDEX).sum())
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        loss = losses / supervised
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if name.startswith("mm_projector")}
        return loss.detach(), supervised, grads

    # Padded: transformers' sdpa with the padding mask. Packed: the per-conversation attention training uses.
    padded_loss, padded_count, padded_grads = mean_loss_and_projector_grad(padded)
    use_for_packing(model)
    packed_loss, packed_count, packed_grads = mean_loss_and_projector_grad(packed)

    assert packed_count == padded_count > 0
    torch.testing.assert_close(packed_loss, padded_loss, rtol=0, atol=1e-5)
    assert padded_grads and padded_grads.keys() == packed_grads.keys()
    assert all(grad.abs().max() > 0 for grad in padded_grads.values())
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_packed_batch_with_images_scored_at_supervised_positions_only_gives_the_same_gradients(
    fused_model_dir, tokenizer, tmp_path
):
    from transformers import AutoModelForCausalLM

    from yuren_trainer.trainer import supervised_positions_only

    model = AutoModelForCausalLM.from_pretrained(fused_model_dir, dtype=torch.float32)
    use_for_packing(model)
    write_images(tmp_path / "images")
    path = write_json(tmp_path / "llava.json", llava_records())
    rows, _ = load_sft_dataset(
        path, tokenizer, max_length=512, image_seq_len=model.config.image_seq_len, cache_dir=tmp_path / "cache"
    )
    loader = FolderImageLoader(ImageProcessor.from_config(model.config), tmp_path / "images")
    packed = PackedCollator(special_ids(tokenizer).pad, image_loader=loader, flatten=True)([dict(row) for row in rows])
    supervised = int((packed["labels"][:, 1:] != IGNORE_INDEX).sum())
    # Image patches are never supervised: most of the row is left out of the output head.
    assert 0 < supervised < packed["input_ids"].shape[1] // 2

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    full_loss, full_grads = loss_and_grads(packed)
    kept = supervised_positions_only(packed)
    assert kept["logits_to_keep"].numel() == supervised
    kept_loss, kept_grads = loss_and_grads(kept)
    torch.testing.assert_close(kept_loss, full_loss, rtol=0, atol=1e-6)
    assert kept_grads.keys() == full_grads.keys() and any(name.startswith("mm_projector") for name in full_grads)
    for name, grad in full_grads.items():
        torch.testing.assert_close(kept_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
