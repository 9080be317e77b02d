"""merge-lora: the merged model computes what base + adapter computed, and keeps the tokenizer."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from merge_lora.__main__ import main
from yuren_core.chatml import render
from yuren_core.vocab import load_tokenizer, special_ids

PROMPT = [{"from": "system", "value": "You are YuRen."}, {"from": "human", "value": "今天天气怎么样? Answer briefly."}]


@pytest.fixture(scope="module")
def adapter(prepared_base, tmp_path_factory):
    """An adapter shaped like the trainer's QLoRA ones (LoRA on all projections, new-token rows), non-zero."""
    from peft import LoraConfig, get_peft_model

    from yuren_trainer.qlora import QLoRASettings, new_token_ids

    tokenizer = load_tokenizer(str(prepared_base))
    rows = new_token_ids(tokenizer)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=list(QLoRASettings().lora_target_modules),
        task_type="CAUSAL_LM",
        trainable_token_indices={"embed_tokens": rows, "lm_head": rows},
    )
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(prepared_base), config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:  # LoRA B and the row deltas start at zero; a trained adapter's are not
                parameter.copy_(torch.randn_like(parameter) * 0.05)
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def merge_lora(base, lora, target, *flags: str) -> None:
    main(["--base-model-path", str(base), "--lora-path", str(lora), "--target-model-path", str(target), *flags])


def logits(model, tokenizer):
    ids = torch.tensor([render(tokenizer, PROMPT, add_generation_prompt=True).input_ids])
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_merged_model_matches_the_adapter_model(prepared_base, adapter, tmp_path, capsys):
    from peft import PeftModel

    target = tmp_path / "merged"
    merge_lora(prepared_base, adapter, target)
    assert f"done: {target}" in capsys.readouterr().out
    assert (target / "model.safetensors").is_file() and not list(target.glob("*.bin"))
    assert not (target / "adapter_config.json").exists()

    tokenizer = load_tokenizer(str(target))
    assert special_ids(tokenizer) == special_ids(load_tokenizer(str(prepared_base)))
    merged = AutoModelForCausalLM.from_pretrained(target)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(prepared_base), adapter)
    base = AutoModelForCausalLM.from_pretrained(prepared_base)
    merged_logits = logits(merged, tokenizer)
    torch.testing.assert_close(merged_logits, logits(adapted, tokenizer), rtol=1e-4, atol=1e-4)
    assert (merged_logits - logits(base, tokenizer)).abs().max() > 0.1
    # The new-token rows of the embeddings and the head were merged too.
    im_start = special_ids(tokenizer).im_start
    for rows in ("get_input_embeddings", "get_output_embeddings"):
        assert not torch.equal(getattr(merged, rows)().weight[im_start], getattr(base, rows)().weight[im_start])


def test_merge_in_bf16_saves_bf16(prepared_base, adapter, tmp_path):
    target = tmp_path / "merged-bf16"
    merge_lora(prepared_base, adapter, target, "--dtype", "bfloat16")
    assert json.loads((target / "config.json").read_text())["dtype"] == "bfloat16"
    weights = load_file(target / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    # The bf16 merge is the fp32 merge up to bf16 rounding, not another model.
    fp32 = tmp_path / "merged-fp32"
    merge_lora(prepared_base, adapter, fp32)
    for name, weight in load_file(fp32 / "model.safetensors").items():
        assert weight.dtype == torch.float32
        torch.testing.assert_close(weights[name], weight.to(torch.bfloat16), rtol=1.6e-2, atol=1e-3)


def test_a_quantized_base_is_refused(prepared_base, adapter, tmp_path, capsys):
    from transformers import BitsAndBytesConfig

    quantized = tmp_path / "base-4bit"
    model = AutoModelForCausalLM.from_pretrained(
        prepared_base, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    )
    model.save_pretrained(quantized)
    with pytest.raises(SystemExit) as exit_info:
        merge_lora(quantized, adapter, tmp_path / "t")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "bitsandbytes quantized weights" in err and "never a 4-bit/8-bit one" in err
    assert not (tmp_path / "t").exists()


def test_bad_paths_are_reported(prepared_base, adapter, tmp_path, capsys):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        merge_lora(prepared_base, adapter, occupied)
    assert exit_info.value.code == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (occupied / "keep.txt").read_text() == "mine"

    not_adapter = tmp_path / "not-adapter"
    shutil.copytree(prepared_base, not_adapter)
    with pytest.raises(SystemExit) as exit_info:
        merge_lora(prepared_base, not_adapter, tmp_path / "t")
    assert exit_info.value.code == 2
    assert "no adapter_config.json" in capsys.readouterr().err
