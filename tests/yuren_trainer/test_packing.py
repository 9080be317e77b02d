"""Packing and collation: conversations share rows, never attention; the loss does not notice."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import MEMORY_CONVERSATIONS

from yuren_core.chatml import render
from yuren_core.constants import IGNORE_INDEX
from yuren_core.vocab import special_ids
from yuren_trainer.collator import PackedCollator, PaddingCollator, padding_tokens
from yuren_trainer.packing import assign_bins, pack_rows


def test_bins_hold_every_item_once_within_capacity():
    lengths = [7, 3, 9, 1, 4, 4, 10, 2, 6]
    bins = assign_bins(lengths, 10)
    assert sorted(i for members in bins for i in members) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in members) <= 10 for members in bins)
    assert len(bins) == 5  # 47 tokens need at least 5 bins of 10
    assert bins == assign_bins(lengths, 10)
    with pytest.raises(ValueError, match="item 6 has length 10 > capacity 9"):
        assign_bins(lengths, 9)


def rows(tokenizer, conversations=MEMORY_CONVERSATIONS):
    rendered = [render(tokenizer, c["conversations"]) for c in conversations]
    return [{"input_ids": r.input_ids, "labels": r.labels, "images": []} for r in rendered]


def test_packed_rows_restart_positions_and_mask_the_first_label(tokenizer):
    # Every token supervised: the renderer already masks a conversation's first token, which would hide the masking.
    singles = [{**row, "labels": list(row["input_ids"])} for row in rows(tokenizer)]
    columns = {key: [row[key] for row in singles] for key in ("input_ids", "labels", "images")}
    packed = pack_rows(columns, max_length=sum(len(r["input_ids"]) for r in singles))
    assert len(packed["input_ids"]) == 1 and packed["seq_lengths"][0] == [len(r["input_ids"]) for r in singles]
    # Packing only concatenates; the collator masks each conversation's first label.
    assert packed["labels"][0] == [t for r in singles for t in r["input_ids"]]
    first_masked = [t for r in singles for t in [IGNORE_INDEX, *r["input_ids"][1:]]]

    pad = special_ids(tokenizer).pad
    row = {key: packed[key][0] for key in packed}
    batch = PackedCollator(pad)([row, singles[0]])
    assert "attention_mask" not in batch and batch["use_cache"] is False
    lengths = row["seq_lengths"]
    expected_positions = torch.cat([torch.arange(n) for n in lengths])
    assert torch.equal(batch["position_ids"][0], expected_positions)
    assert batch["labels"][0].tolist() == first_masked
    # The shorter row is padded by a block of its own: positions from 0, pad ids, no labels.
    n = len(singles[0]["input_ids"])
    assert batch["labels"][1, :n].tolist() == [IGNORE_INDEX, *singles[0]["input_ids"][1:]]
    assert torch.equal(batch["position_ids"][1, n:], torch.arange(batch["input_ids"].shape[1] - n))
    assert (batch["input_ids"][1, n:] == pad).all() and (batch["labels"][1, n:] == IGNORE_INDEX).all()
    assert padding_tokens(batch, pad) == (batch["input_ids"].shape[1] - n, batch["input_ids"].numel())


def test_padding_collator_masks_padding(tokenizer):
    singles = rows(tokenizer)
    pad = special_ids(tokenizer).pad
    batch = PaddingCollator(pad)(singles)
    for i, row in enumerate(singles):
        n = len(row["input_ids"])
        assert batch["attention_mask"][i].sum() == n
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
    padding, total = padding_tokens(batch, pad)
    assert padding == total - sum(len(r["input_ids"]) for r in singles)


def test_rows_with_images_need_an_image_loader(tokenizer):
    row = {**rows(tokenizer)[0], "images": ["a.png", "b.png"]}
    with pytest.raises(ValueError, match="no image loader"):
        PaddingCollator(0)([row])
    batch = PackedCollator(0, image_loader=lambda paths: torch.zeros(len(paths), 3, 8, 8))([row, row])
    assert batch["pixel_values"].shape == (4, 3, 8, 8)


@pytest.fixture(scope="module")
def model(prepared_base):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(prepared_base).eval()


def test_packed_conversations_do_not_see_each_other(model, tokenizer):
    singles = rows(tokenizer)
    pad = special_ids(tokenizer).pad
    packed = PackedCollator(pad)(
        [
            {
                "input_ids": [t for r in singles for t in r["input_ids"]],
                "labels": [t for r in singles for t in r["labels"]],
                "seq_lengths": [len(r["input_ids"]) for r in singles],
            }
        ]
    )
    with torch.no_grad():
        packed_logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]
        start = 0
        for row in singles:
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            inside = packed_logits[start : start + len(row["input_ids"])]
            torch.testing.assert_close(inside, alone, rtol=1e-4, atol=1e-4)
            start += len(row["input_ids"])


def test_packed_loss_equals_unpacked_loss(model, tokenizer):
    singles = rows(tokenizer)
    pad = special_ids(tokenizer).pad
    padded = PaddingCollator(pad)(singles)
    columns = {key: [row[key] for row in singles] for key in ("input_ids", "labels", "images")}
    packed_columns = pack_rows(columns, max_length=sum(len(r["input_ids"]) for r in singles))
    packed = PackedCollator(pad)([{key: packed_columns[key][0] for key in packed_columns}])
    # The same supervised targets in both (the count HF averages the loss over).
    assert (padded["labels"][:, 1:] != IGNORE_INDEX).sum() == (packed["labels"][:, 1:] != IGNORE_INDEX).sum()
    with torch.no_grad():
        unpacked_loss = model(**padded).loss
        packed_loss = model(**packed).loss
    torch.testing.assert_close(packed_loss, unpacked_loss, rtol=1e-5, atol=1e-5)


def test_a_flattened_batch_pads_nothing_and_trains_as_the_padded_batch(prepared_base, tokenizer):
    from transformers import AutoModelForCausalLM

    from yuren_trainer.segment_attention import use_for_packing

    model = AutoModelForCausalLM.from_pretrained(prepared_base, dtype=torch.float32)
    singles = rows(tokenizer)
    pad = special_ids(tokenizer).pad
    columns = {key: [row[key] for row in singles] for key in ("input_ids", "labels", "images")}
    lengths = [len(r["input_ids"]) for r in singles]
    packed_columns = pack_rows(columns, max_length=max(lengths) + min(lengths))
    packed_rows = [
        {key: packed_columns[key][i] for key in packed_columns} for i in range(len(packed_columns["length"]))
    ]
    # Several rows of different lengths (kept apart, they would pad), each holding several conversations.
    assert len({len(row["input_ids"]) for row in packed_rows}) > 1
    assert all(len(row["seq_lengths"]) > 1 for row in packed_rows)

    flat = PackedCollator(pad, flatten=True)(packed_rows)
    tokens = sum(len(r["input_ids"]) for r in singles)
    assert flat["input_ids"].shape == (1, tokens) and padding_tokens(flat, pad) == (0, tokens)
    lengths = [n for row in packed_rows for n in row["seq_lengths"]]
    assert torch.equal(flat["position_ids"][0], torch.cat([torch.arange(n) for n in lengths]))

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    padded_loss, padded_grads = loss_and_grads(PaddingCollator(pad)(singles))
    use_for_packing(model)
    flat_loss, flat_grads = loss_and_grads(flat)
    torch.testing.assert_close(flat_loss, padded_loss, rtol=0, atol=1e-5)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(flat_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def lm_head_rows(model):
    """A list that collects, per forward, how many positions the output head projects."""
    rows = []
    model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: rows.append(args[0][0].shape[0]))
    return rows


def test_a_flattened_batch_projects_only_supervised_positions_with_the_same_loss_and_gradients(
    prepared_base, tokenizer, tmp_path
):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from yuren_trainer.segment_attention import use_for_packing
    from yuren_trainer.trainer import SFTTrainer, supervised_positions_only

    model = AutoModelForCausalLM.from_pretrained(prepared_base, dtype=torch.float32)
    use_for_packing(model)
    pad = special_ids(tokenizer).pad
    singles = rows(tokenizer)
    flat = PackedCollator(pad, flatten=True)(singles)
    supervised = int((flat["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert 0 < supervised < flat["input_ids"].shape[1] // 2
    projected = lm_head_rows(model)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = SFTTrainer(model=model, args=args, pad_token_id=pad)

    def loss_and_grads(compute_loss, num_items_in_batch):
        """The loss and every gradient, from the stock Trainer's ``compute_loss`` or ours, on the same trainer."""
        model.zero_grad()
        loss = compute_loss(trainer, model, dict(flat), num_items_in_batch=num_items_in_batch)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    # The Trainer passes the accumulated batch's supervised-token count when it can (sum / count), else nothing (mean).
    for num_items in (None, torch.tensor(3 * supervised)):
        full_loss, full_grads = loss_and_grads(Trainer.compute_loss, num_items)
        kept_loss, kept_grads = loss_and_grads(SFTTrainer.compute_loss, num_items)
        assert projected[-2:] == [flat["input_ids"].shape[1], supervised]
        torch.testing.assert_close(kept_loss, full_loss, rtol=0, atol=1e-6)
        for name, grad in full_grads.items():
            torch.testing.assert_close(kept_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # Padded rows keep the full projection.
    padded = PaddingCollator(pad)(singles)
    assert supervised_positions_only(padded) is padded


def test_a_flattened_batch_under_lora_projects_only_supervised_positions(prepared_base, tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from yuren_trainer.segment_attention import use_for_packing
    from yuren_trainer.trainer import supervised_positions_only

    base = AutoModelForCausalLM.from_pretrained(prepared_base, dtype=torch.float32)
    use_for_packing(base)
    pad = special_ids(tokenizer).pad
    # As QLoRA trains them: adapters, plus the new tokens' rows of the embeddings and the output head.
    ids = special_ids(tokenizer)
    token_ids = [ids.im_start, ids.im_end, ids.img_start, ids.img_patch, ids.img_end]
    config = LoraConfig(
        r=4,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
        trainable_token_indices={"embed_tokens": token_ids, "lm_head": token_ids},
    )
    model = get_peft_model(base, config)
    flat = PackedCollator(pad, flatten=True)(rows(tokenizer))
    supervised = int((flat["labels"][:, 1:] != IGNORE_INDEX).sum())
    projected = lm_head_rows(model.get_base_model())

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    full_loss, full_grads = loss_and_grads(flat)
    kept_loss, kept_grads = loss_and_grads(supervised_positions_only(flat))
    assert projected == [flat["input_ids"].shape[1], supervised]
    torch.testing.assert_close(kept_loss, full_loss, rtol=0, atol=1e-6)
    # lora_B starts at zero, so lora_A has no gradient yet; everything else must have one.
    assert full_grads and all(grad.abs().max() > 0 for name, grad in full_grads.items() if "lora_A" not in name)
    for name, grad in full_grads.items():
        torch.testing.assert_close(kept_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
