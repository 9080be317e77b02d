"""``quantize``: a saved 8-bit/4-bit checkpoint loads directly and decodes as quantizing at load does."""

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoConfig

from quantize_model.__main__ import main
from yuren_core.decoding import Decoder
from yuren_core.loading import load_model
from yuren_core.modeling import YuRenConfig, YuRenForCausalLM
from yuren_core.quantized import saved_quantization
from yuren_core.vocab import load_tokenizer

QUANTIZED_TYPE = {8: bnb.nn.Linear8bitLt, 4: bnb.nn.Linear4bit}
PIXELS = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def bf16_dir(fused_model_dir, tmp_path_factory):
    """A small bf16 checkpoint (widths divisible by 32, as bitsandbytes' CPU 4-bit kernel needs)."""
    settings = AutoConfig.from_pretrained(fused_model_dir).to_dict()
    settings.update(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, head_dim=64)  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = YuRenForCausalLM(YuRenConfig.from_dict(settings)).to(torch.bfloat16)
    out = tmp_path_factory.mktemp("bf16")
    model.save_pretrained(out)
    load_tokenizer(str(fused_model_dir)).save_pretrained(out)
    return out


def greedy(model) -> list[int]:
    config = model.config
    prompt = [5, 6, config.img_start_token_id, *[config.img_patch_token_id] * config.image_seq_len,
              config.img_end_token_id, 7, 8]  # fmt: skip
    return list(Decoder(model).tokens(prompt, pixel_values=PIXELS, max_new_tokens=12, repetition_penalty=1.1))


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
def test_saved_checkpoint_loads_directly_and_decodes_as_quantizing_at_load(bf16_dir, tmp_path, bits):
    output = tmp_path / f"model-{bits}bit"
    main([str(bf16_dir), "--bits", str(bits), "--output", str(output)])
    assert saved_quantization(AutoConfig.from_pretrained(output)) == bits
    at_load, _, _ = load_model(bf16_dir, load_8bit=bits == 8, load_4bit=bits == 4)
    saved, tokenizer, processor = load_model(output)  # no flag: the saved config decides
    layer = saved.model.layers[0].mlp.down_proj
    assert isinstance(layer, QUANTIZED_TYPE[bits])
    assert layer.weight.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert type(saved.lm_head) is torch.nn.Linear and processor is not None and len(tokenizer) > 0
    assert greedy(saved) == greedy(at_load)
    # Asking for the width it was saved in is fine; asking for the other is refused.
    load_model(output, load_8bit=bits == 8, load_4bit=bits == 4)
    with pytest.raises(ValueError, match=f"{output}.*holds {bits}-bit weights"):
        load_model(output, load_8bit=bits == 4, load_4bit=bits == 8)


def test_refuses_a_quantized_input_and_an_existing_output(bf16_dir, tmp_path, capsys):
    output = tmp_path / "model-8bit"
    main([str(bf16_dir), "--bits", "8", "--output", str(output)])
    assert isinstance(load_model(output)[0].model.layers[1].self_attn.q_proj, bnb.nn.Linear8bitLt)
    with pytest.raises(SystemExit):
        main([str(output), "--bits", "4", "--output", str(tmp_path / "again")])
    assert "already a 8-bit checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(bf16_dir), "--bits", "8", "--output", str(output)])
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_interrupted_save_leaves_no_output(bf16_dir, tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(YuRenForCausalLM, "save_pretrained", fail)
    with pytest.raises(SystemExit):
        main([str(bf16_dir), "--bits", "8", "--output", str(tmp_path / "out")])
    assert list(tmp_path.iterdir()) == []
