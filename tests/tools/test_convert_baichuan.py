"""convert-baichuan: Baichuan-7B's own layout (fused W_pack) to LLaMA's, checked against Baichuan's own forward."""

import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from baichuan_reference import (
    HIDDEN,
    MARKER,
    WEIGHT_FORMATS,
    baichuan_config,
    baichuan_forward,
    baichuan_weights,
    build_baichuan,
)
from transformers import AutoModelForCausalLM

from prepare_base_model import baichuan
from prepare_base_model.baichuan import convert_baichuan
from prepare_base_model.convert_baichuan import main
from prepare_base_model.prepare import prepare
from yuren_core.vocab import load_tokenizer

TEXTS = ("你好，世界！", "Hello, world: 1234 apples.", "  两个空格 and\ttabs\n换行", "百川 Baichuan-7B 的分词器")
# Two rows of ids, the first 0 and 1 (unk and bos) included.
INPUT_IDS = torch.tensor(
    [[1, 5, 99, 400, 37, 0, 1234, 8, 1999, 64, 3, 2], [1, 700, 701, 702, 12, 13, 14, 15, 16, 17, 18, 19]]
)


@pytest.fixture(scope="module")
def sp_model(tiny_dir) -> Path:
    return tiny_dir / "base" / "tokenizer.model"


@pytest.fixture(scope="module")
def vocab_size(sp_model) -> int:
    return spm.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()


@pytest.fixture(scope="module")
def converted(sp_model, tmp_path_factory) -> Path:
    """The tiny Baichuan checkpoint (sharded .bin, as Baichuan's hub files) converted, output in small shards."""
    root = tmp_path_factory.mktemp("baichuan")
    source = build_baichuan(sp_model, root / "source", weight_format="sharded_bin")
    return convert_baichuan(str(source), root / "llama", max_shard_size="300KB")


def reference_logits(vocab_size: int) -> torch.Tensor:
    return baichuan_forward(baichuan_weights(vocab_size), INPUT_IDS)


@pytest.mark.parametrize("weight_format", WEIGHT_FORMATS)
def test_converted_logits_equal_baichuan_forward(weight_format, sp_model, vocab_size, tmp_path):
    source = build_baichuan(sp_model, tmp_path / "source", weight_format=weight_format)
    out = convert_baichuan(str(source), tmp_path / "llama")
    # Eager attention computes what Baichuan's does in the same order: the logits are bit for bit its own.
    model = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        logits = model(INPUT_IDS).logits
    expected = reference_logits(vocab_size)
    assert logits.shape == expected.shape == (*INPUT_IDS.shape, vocab_size)
    assert torch.equal(logits, expected)
    # The split itself, exactly: q, k and v are W_pack's rows in that order.
    w_pack = baichuan_weights(vocab_size)["model.layers.1.self_attn.W_pack.weight"]
    attention = model.model.layers[1].self_attn
    for i, proj in enumerate((attention.q_proj, attention.k_proj, attention.v_proj)):
        assert torch.equal(proj.weight, w_pack[i * HIDDEN : (i + 1) * HIDDEN])
    assert not (source / MARKER).exists(), "the checkpoint's own Python code was run"


def test_converted_layout_is_llama_with_the_source_config(converted, vocab_size):
    config = json.loads((converted / "config.json").read_text())
    source = baichuan_config(vocab_size)
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    for field in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
        assert config[field] == source[field], field
    assert config["num_key_value_heads"] == source["num_attention_heads"]
    assert config["rms_norm_eps"] == source["rms_norm_eps"]
    assert config["max_position_embeddings"] == 4096
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    assert config["tie_word_embeddings"] is False and config["dtype"] == "float32"
    files = sorted(p.name for p in converted.iterdir())
    shards = [f for f in files if f.startswith("model-") and f.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in files
    assert not [f for f in files if f.endswith((".bin", ".py"))] and not [f for f in files if f.startswith(".")]
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"} <= set(files)


def test_converted_tokenizer_encodes_as_the_source_sentencepiece(converted, sp_model):
    processor = spm.SentencePieceProcessor(model_file=str(sp_model))
    tokenizer = load_tokenizer(str(converted))
    assert type(tokenizer).__name__ in ("LlamaTokenizer", "LlamaTokenizerFast")
    for text in TEXTS:
        assert tokenizer(text, add_special_tokens=False).input_ids == processor.encode(text), text
        # The source says add_bos_token false: the converted tokenizer adds nothing either.
        assert tokenizer(text).input_ids == processor.encode(text), text
        assert tokenizer.decode(processor.encode(text)) == text
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == ("<s>", "</s>", "<unk>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    assert len(tokenizer) == processor.get_piece_size()


def test_converted_base_goes_through_prepare_base_model(converted, vocab_size, tmp_path):
    prepared = prepare(str(converted), tmp_path / "prepared")
    model = AutoModelForCausalLM.from_pretrained(prepared, attn_implementation="eager").eval()
    assert model.config.vocab_size % 128 == 0 and model.config.vocab_size > vocab_size
    with torch.no_grad():
        logits = model(INPUT_IDS).logits
    # The base vocabulary's logits are still Baichuan's own (fp32; the wider output matmul may sum differently).
    torch.testing.assert_close(logits[..., :vocab_size], reference_logits(vocab_size), rtol=0, atol=1e-5)


def run_main(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main([*args])
    return exited.value.code, capsys.readouterr().err


def test_command_is_installed_writes_the_output_and_refuses_to_clobber(sp_model, vocab_size, tmp_path, capsys):
    (script,) = entry_points(group="console_scripts", name="convert-baichuan")
    assert script.load() is main
    source = build_baichuan(sp_model, tmp_path / "source", weight_format="safetensors", dtype=torch.bfloat16)
    out = tmp_path / "llama"
    main([str(source), "--output", str(out)])
    assert capsys.readouterr().out.splitlines()[-1] == f"done: {out}"
    # Saved in the weights' own dtype, not the float32 config.json claims.
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert model.config.dtype == torch.bfloat16
    w_pack = baichuan_weights(vocab_size)["model.layers.0.self_attn.W_pack.weight"].to(torch.bfloat16)
    assert torch.equal(model.model.layers[0].self_attn.v_proj.weight, w_pack[2 * HIDDEN :])
    code, err = run_main(capsys, str(source), "--output", str(out))
    assert code == 2 and "--overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama", "source"]


def test_a_failed_conversion_leaves_no_output(sp_model, tmp_path, monkeypatch):
    source = build_baichuan(sp_model, tmp_path / "source")

    def interrupted(path):
        raise KeyboardInterrupt

    # Fails after the weights are written, while the tokenizer is.
    monkeypatch.setattr(baichuan, "load_tokenizer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        baichuan.convert_baichuan(str(source), tmp_path / "llama")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]


def test_non_baichuan_sources_are_refused_by_name(sp_model, tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    # A LLaMA-layout model (the tiny base): nothing to convert.
    code, err = run_main(capsys, str(tiny_dir / "base"), "--output", str(out))
    assert code == 2 and err.startswith("convert-baichuan: error: ")
    assert "config.json: model_type is 'llama', not 'baichuan'" in err and "prepare-base-model --base" in err
    # Baichuan 2 / Baichuan-13B: same model_type, another architecture.
    source = build_baichuan(sp_model, tmp_path / "source", weight_format="safetensors")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "architectures": ["BaichuanForCausalLM"]}))
    code, err = run_main(capsys, str(source), "--output", str(out))
    assert code == 2 and "config.json: architectures is ['BaichuanForCausalLM']" in err and "ALiBi" in err
    # A W_pack that does not fit hidden_size.
    (source / "config.json").write_text(json.dumps({**config, "hidden_size": 32, "intermediate_size": 80}))
    code, err = run_main(capsys, str(source), "--output", str(out))
    assert code == 2 and "model.layers.0.self_attn.W_pack.weight has shape (192, 64)" in err
    # Ids in config.json that the tokenizer's special tokens do not have.
    (source / "config.json").write_text(json.dumps({**config, "eos_token_id": 7}))
    code, err = run_main(capsys, str(source), "--output", str(out))
    assert code == 2 and "eos_token '</s>' is not piece 7 of tokenizer.model, as config.json's eos_token_id says" in err
    # A directory without config.json, and no directory at all.
    code, err = run_main(capsys, str(tmp_path), "--output", str(out))
    assert code == 2 and "no config.json" in err
    code, err = run_main(capsys, str(tmp_path / "no-such-model"), "--output", str(out))
    assert code == 2 and "is not a local directory, and reading config.json from the Hugging Face hub failed" in err
    # Nothing written, not even a partial directory, and none of the source's code run.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"] and not (source / MARKER).exists()
