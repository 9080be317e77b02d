"""Assembling a fused model from its parts; loading checkpoints in full precision, 8-bit and 4-bit."""

import bitsandbytes as bnb
import open_clip
import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from yuren_core.loading import build_fused_model, load_model
from yuren_core.modeling import YuRenConfig, YuRenForCausalLM
from yuren_core.vision import ImageProcessor
from yuren_core.vocab import load_tokenizer, special_ids


def image_prompt(config, tokens_before=(5, 6), tokens_after=(7, 8)):
    patches = [config.img_patch_token_id] * config.image_seq_len
    return torch.tensor([[*tokens_before, config.img_start_token_id, *patches, config.img_end_token_id, *tokens_after]])


PIXELS = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def mid_model_dir(fused_model_dir, tmp_path_factory):
    """A bf16 checkpoint whose language model's linear layers dominate its size, as at 7B (~32M parameters)."""
    settings = AutoConfig.from_pretrained(fused_model_dir).to_dict()
    settings.update(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=4,
        num_attention_heads=12,
        num_key_value_heads=12,
        head_dim=64,
    )
    config = YuRenConfig.from_dict(settings)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = YuRenForCausalLM(config).to(torch.bfloat16)
    out = tmp_path_factory.mktemp("mid")
    model.save_pretrained(out)
    load_tokenizer(str(fused_model_dir)).save_pretrained(out)
    return out


def test_fused_model_adds_nothing_to_the_base(prepared_base, tiny_clip_id):
    model, tokenizer, processor = build_fused_model(prepared_base, tiny_clip_id)
    base = AutoModelForCausalLM.from_pretrained(prepared_base)
    base_tokenizer = load_tokenizer(str(prepared_base))
    assert len(tokenizer) == len(base_tokenizer) and tokenizer.get_vocab() == base_tokenizer.get_vocab()
    assert model.config.vocab_size == base.config.vocab_size
    fused_weights = model.state_dict()
    for name, weight in base.state_dict().items():
        assert torch.equal(fused_weights[name], weight), name
    assert {name.split(".")[0] for name in fused_weights} - {name.split(".")[0] for name in base.state_dict()} == {
        "vision_tower",
        "mm_projector",
    }
    visual = open_clip.create_model(tiny_clip_id).visual.state_dict()
    for name, weight in visual.items():
        assert torch.equal(fused_weights[f"vision_tower.{name}"], weight), name
    ids = special_ids(tokenizer)
    assert (model.config.img_start_token_id, model.config.img_patch_token_id, model.config.img_end_token_id) == (
        ids.img_start,
        ids.img_patch,
        ids.img_end,
    )
    assert model.generation_config.eos_token_id == base.generation_config.eos_token_id
    assert processor.image_size == (32, 32)


def test_fused_model_needs_a_prepared_base(tiny_dir, tiny_clip_id, fused_model_dir):
    with pytest.raises(ValueError, match="prepare-base-model"):
        build_fused_model(tiny_dir / "base", tiny_clip_id)
    with pytest.raises(ValueError, match="already a YuRen model"):
        build_fused_model(fused_model_dir, tiny_clip_id)


def test_load_model_defaults_to_fp32_on_cpu(fused_model_dir):
    model, tokenizer, processor = load_model(fused_model_dir)
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert special_ids(tokenizer).img_patch == model.config.img_patch_token_id
    assert processor.image_size == ImageProcessor.from_pretrained(fused_model_dir).image_size
    assert model(input_ids=image_prompt(model.config), pixel_values=PIXELS).logits.isfinite().all()


def test_load_model_rejects_a_plain_base(prepared_base):
    with pytest.raises(ValueError, match="model_type 'llama', not 'yuren'"):
        load_model(prepared_base)


@pytest.mark.parametrize("device_map", ["auto", {"": "cpu"}])
def test_load_model_places_with_device_map(fused_model_dir, device_map):
    model, _, _ = load_model(fused_model_dir, device_map=device_map, dtype=torch.bfloat16)
    unplaced, _, _ = load_model(fused_model_dir, dtype=torch.bfloat16)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    input_ids = image_prompt(model.config)
    with torch.no_grad():
        generated = model.generate(input_ids, pixel_values=PIXELS, max_new_tokens=4, do_sample=False)
        expected = unplaced.generate(input_ids, pixel_values=PIXELS, max_new_tokens=4, do_sample=False)
    # Placing the model changes where it computes, not what.
    assert generated.shape[1] == input_ids.shape[1] + 4
    assert torch.equal(generated, expected)


def assert_vision_side_unquantized(model, dtype):
    for name in ("vision_tower", "mm_projector", "lm_head"):
        module = getattr(model, name)
        quantized = [n for n, m in module.named_modules() if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))]
        assert not quantized, f"{name}: {quantized}"
        assert {p.dtype for p in module.parameters()} == {dtype}, name
    assert type(model.mm_projector) is nn.Linear and type(model.lm_head) is nn.Linear


def test_8bit_keeps_vision_unquantized_and_saves_memory(mid_model_dir):
    full, _, _ = load_model(mid_model_dir, dtype=torch.bfloat16)
    quantized, _, _ = load_model(mid_model_dir, load_8bit=True)

    up_proj = quantized.model.layers[0].mlp.up_proj
    assert isinstance(up_proj, bnb.nn.Linear8bitLt) and up_proj.weight.dtype == torch.int8
    assert_vision_side_unquantized(quantized, torch.float16)
    assert quantized.get_memory_footprint() <= 0.6 * full.get_memory_footprint()

    input_ids = image_prompt(full.config)
    with torch.no_grad():
        reference = full(input_ids=input_ids, pixel_values=PIXELS).logits.float().flatten()
        logits = quantized(input_ids=input_ids, pixel_values=PIXELS).logits.float().flatten()
    assert torch.corrcoef(torch.stack([reference, logits]))[0, 1] > 0.95


def test_4bit_loads_and_generates(mid_model_dir):
    # (bitsandbytes' CPU 4-bit kernel needs layer widths divisible by 32, as real models' are.)
    full, _, _ = load_model(mid_model_dir, dtype=torch.float32)
    model, _, _ = load_model(mid_model_dir, load_4bit=True)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.quant_state.quant_type == "nf4"
    assert_vision_side_unquantized(model, torch.float32)
    assert model.get_memory_footprint() <= 0.5 * full.get_memory_footprint()
    input_ids = image_prompt(model.config)
    with torch.no_grad():
        reference = full(input_ids=input_ids, pixel_values=PIXELS).logits.flatten()
        logits = model(input_ids=input_ids, pixel_values=PIXELS).logits
        first = logits[0, -1].argmax()
    # The quantized model computes (nearly) what the full one does, not just something.
    assert torch.corrcoef(torch.stack([reference, logits.float().flatten()]))[0, 1] > 0.9
    with torch.no_grad():
        generated = model.generate(input_ids, pixel_values=PIXELS, max_new_tokens=3, do_sample=False)
    assert generated[0, input_ids.shape[1]] == first


def test_8bit_and_4bit_are_exclusive(fused_model_dir):
    with pytest.raises(ValueError, match="not both"):
        load_model(fused_model_dir, load_8bit=True, load_4bit=True)
