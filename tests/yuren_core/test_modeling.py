"""The fused model: image splice, save/load, the image's effect on logits, generation."""

import threading

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM, TextIteratorStreamer

from yuren_core.chatml import render
from yuren_core.loading import build_fused_model
from yuren_core.modeling import YuRenConfig, YuRenForCausalLM, merge_image_features
from yuren_core.vocab import special_ids


@pytest.fixture(scope="module")
def model(fused_model_dir):
    return AutoModelForCausalLM.from_pretrained(fused_model_dir).eval()


@pytest.fixture(scope="module")
def ids(tokenizer):
    return special_ids(tokenizer)


def conversation(num_images, question="这张图里有什么?"):
    return [{"from": "human", "value": "<image>\n" * num_images + question}]


def prompt(tokenizer, model, num_images, question="这张图里有什么?"):
    rendered = render(
        tokenizer,
        conversation(num_images, question),
        image_seq_len=model.config.image_seq_len,
        add_generation_prompt=True,
    )
    assert rendered.num_images == num_images
    return torch.tensor([rendered.input_ids])


def images(count, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 32, 32, generator=generator)


def reference_merge(inputs_embeds, input_ids, image_features, ids):
    """Walk each sample's image blocks in order and copy the next image's features into them."""
    merged = inputs_embeds.clone()
    next_image = 0
    for sample in range(input_ids.shape[0]):
        tokens = input_ids[sample].tolist()
        for start, token in enumerate(tokens):
            if token != ids.img_start:
                continue
            for offset in range(image_features.shape[1]):
                assert tokens[start + 1 + offset] == ids.img_patch
                merged[sample, start + 1 + offset] = image_features[next_image, offset]
            next_image += 1
    assert next_image == image_features.shape[0]
    return merged


def mixed_batch(tokenizer, ids, seq_len):
    """Right-padded batch: samples with 0, 1, 3 and 2 images, plus the image count."""
    counts = [0, 1, 3, 2]
    rows = [render(tokenizer, conversation(n), image_seq_len=seq_len).input_ids for n in counts]
    width = max(map(len, rows))
    batch = torch.tensor([row + [ids.pad] * (width - len(row)) for row in rows])
    return batch, sum(counts)


def test_splice_equals_reference_loop(tokenizer, ids):
    seq_len, hidden = 16, 24
    input_ids, num_images = mixed_batch(tokenizer, ids, seq_len)
    generator = torch.Generator().manual_seed(0)
    inputs_embeds = torch.randn(*input_ids.shape, hidden, generator=generator)
    features = torch.randn(num_images, seq_len, hidden, generator=generator)

    merged = merge_image_features(inputs_embeds, input_ids, features, ids.img_patch)

    assert torch.equal(merged, reference_merge(inputs_embeds, input_ids, features, ids))
    untouched = input_ids != ids.img_patch
    assert torch.equal(merged[untouched], inputs_embeds[untouched])


def test_splice_passes_gradients_to_the_features(tokenizer, ids):
    input_ids, num_images = mixed_batch(tokenizer, ids, 16)
    features = torch.randn(num_images, 16, 8, requires_grad=True)
    merged = merge_image_features(torch.zeros(*input_ids.shape, 8), input_ids, features, ids.img_patch)
    merged.sum().backward()
    assert torch.equal(features.grad, torch.ones_like(features))


@pytest.mark.parametrize("supplied", [5, 7, 0])
def test_splice_count_mismatch_names_both_counts(tokenizer, ids, supplied):
    input_ids, num_images = mixed_batch(tokenizer, ids, 16)
    assert num_images == 6
    with pytest.raises(ValueError, match=rf"96 image patch tokens, but {supplied} images x 16 patches"):
        merge_image_features(torch.zeros(*input_ids.shape, 8), input_ids, torch.zeros(supplied, 16, 8), ids.img_patch)


def test_forward_rejects_image_tokens_without_images(model, tokenizer):
    with pytest.raises(ValueError, match="16 image patch tokens, but 0 images"):
        model(input_ids=prompt(tokenizer, model, 1))


def test_registered_with_auto_classes(fused_model_dir):
    config = AutoConfig.from_pretrained(fused_model_dir)
    assert type(config) is YuRenConfig and config.model_type == "yuren"
    assert AutoModelForCausalLM.from_config(config).__class__ is YuRenForCausalLM
    assert config.vision_feature_layer == -2 and config.image_seq_len == 16


def test_image_seq_len_must_match_the_tower(fused_model_dir):
    config = AutoConfig.from_pretrained(fused_model_dir).to_dict()
    config["image_seq_len"] = 17
    with pytest.raises(ValueError, match=r"image_seq_len \(17\) must equal the vision tower's patch count \(16\)"):
        YuRenConfig.from_dict(config)


def test_image_position_is_saved_and_checked(fused_model_dir, tmp_path):
    config = AutoConfig.from_pretrained(fused_model_dir)
    assert config.image_position == "before_text"
    config.image_position = "after_text"
    config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).image_position == "after_text"
    bad = config.to_dict() | {"image_position": "above"}
    with pytest.raises(ValueError, match="image_position must be one of 'before_text', 'after_text', got 'above'"):
        YuRenConfig.from_dict(bad)


def test_features_come_from_the_penultimate_block_without_cls(model):
    pixels = images(2, seed=1)
    tower = model.vision_tower
    hidden = tower._embeds(pixels)
    for block in tower.transformer.resblocks[:-1]:
        hidden = block(hidden)
    expected = model.mm_projector(hidden[:, 1:])
    torch.testing.assert_close(model.encode_images(pixels), expected)
    assert expected.shape == (2, model.config.image_seq_len, model.config.hidden_size)


def test_save_and_reload_is_identical_and_self_contained(prepared_base, tiny_dir, tokenizer, tmp_path):
    import shutil

    clip_copy = shutil.copytree(tiny_dir / "clip", tmp_path / "clip")
    built, _, _ = build_fused_model(prepared_base, f"local-dir:{clip_copy}")
    built.eval()
    built.save_pretrained(tmp_path / "model")
    shutil.rmtree(clip_copy)  # the checkpoint must not need the open_clip source any more

    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    weights = [f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt"))]
    assert weights and all(f.endswith(".safetensors") for f in weights), files

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert type(reloaded) is YuRenForCausalLM
    input_ids, pixels = prompt(tokenizer, built, 2), images(2, seed=2)
    with torch.no_grad():
        assert torch.equal(
            built(input_ids=input_ids, pixel_values=pixels).logits,
            reloaded(input_ids=input_ids, pixel_values=pixels).logits,
        )


@torch.no_grad()
def test_logits_depend_on_the_image(model, tokenizer, ids):
    input_ids = prompt(tokenizer, model, 1)
    first = model(input_ids=input_ids, pixel_values=images(1, seed=3)).logits
    second = model(input_ids=input_ids, pixel_values=images(1, seed=4)).logits
    # The language model alone, reading the patch tokens' own embeddings: the image is not there.
    without = LlamaForCausalLM.forward(model, input_ids=input_ids).logits
    before_image = (input_ids[0] == ids.img_start).nonzero()[0].item() + 1
    assert not torch.allclose(first[:, -1], second[:, -1])
    assert not torch.allclose(first[:, -1], without[:, -1])
    # Causal: positions before the image cannot see it.
    assert torch.equal(first[:, :before_image], second[:, :before_image])


@torch.no_grad()
def test_generate_with_image_matches_plain_forward(model, tokenizer):
    input_ids, pixels = prompt(tokenizer, model, 1), images(1, seed=5)
    encoded = []
    hook = model.vision_tower.conv1.register_forward_hook(lambda *args: encoded.append(1))
    try:
        generated = model.generate(input_ids, pixel_values=pixels, max_new_tokens=6, do_sample=False)
    finally:
        hook.remove()
    assert len(encoded) == 1  # the image is encoded once; later steps read it from the KV cache
    new_tokens = generated[0, input_ids.shape[1] :]
    assert len(new_tokens) >= 1
    logits = model(input_ids=input_ids, pixel_values=pixels).logits
    assert new_tokens[0].item() == logits[0, -1].argmax().item()
    # Recomputing everything at each step (image included) gives the same continuation as the cache.
    uncached = model.generate(input_ids, pixel_values=pixels, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(generated, uncached)


@torch.no_grad()
def test_generate_streams_text(model, tokenizer):
    input_ids, pixels = prompt(tokenizer, model, 1), images(1, seed=6)
    expected = model.generate(input_ids, pixel_values=pixels, max_new_tokens=8, do_sample=False)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    kwargs = {"pixel_values": pixels, "max_new_tokens": 8, "do_sample": False, "streamer": streamer}
    thread = threading.Thread(target=model.generate, args=(input_ids,), kwargs=kwargs)
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    text = tokenizer.decode(expected[0, input_ids.shape[1] :], skip_special_tokens=True)
    assert text and streamed == text
