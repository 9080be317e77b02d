"""Vocabulary extension: padding to 128, mean-initialised rows, idempotence, the tokenizer trap."""

import torch
from transformers import AutoModelForCausalLM

from yuren_core.constants import MAX_POSITION_EMBEDDINGS, SPECIAL_TOKENS
from yuren_core.vocab import extend_vocabulary, load_tokenizer


def test_extension_pads_to_128_with_mean_rows_and_is_idempotent(tiny_dir):
    tokenizer = load_tokenizer(str(tiny_dir / "base"))
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "base")
    base_tokens = len(tokenizer)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()

    assert extend_vocabulary(model, tokenizer) == len(SPECIAL_TOKENS)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    rows = emb.shape[0]
    assert rows % 128 == 0 and rows >= base_tokens + len(SPECIAL_TOKENS) > rows - 128
    assert head.shape[0] == rows and model.config.vocab_size == rows
    assert torch.equal(emb[:base_tokens], old_in) and torch.equal(head[:base_tokens], old_out)
    for new, old in ((emb, old_in), (head, old_out)):
        torch.testing.assert_close(new[base_tokens:], old.mean(0).expand(rows - base_tokens, -1))
    assert model.config.max_position_embeddings == MAX_POSITION_EMBEDDINGS
    assert model.config.pad_token_id == tokenizer.pad_token_id

    before = {k: v.clone() for k, v in model.state_dict().items()}
    size = len(tokenizer)
    assert extend_vocabulary(model, tokenizer) == 0
    assert len(tokenizer) == size
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tokenizer_loads_the_sentencepiece_file(tiny_dir):
    # transformers 5's LlamaTokenizer(vocab_file=...) ignored the file and encoded Chinese to nothing.
    tokenizer = load_tokenizer(str(tiny_dir / "base"))
    assert len(tokenizer) >= 1000
    text = "羽人 can read 中文 and English.\n  x = 1"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 5 and tokenizer.decode(ids) == text
