"""Per-conversation attention for packed rows: each conversation sees only itself."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from yuren_trainer.segment_attention import register


def test_segment_attention_keeps_conversations_apart():
    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation(register())
    lengths = [30, 20, 14]
    input_ids = torch.randint(0, 300, (2, sum(lengths)))
    position_ids = torch.cat([torch.arange(n) for n in lengths]).expand(2, -1)
    with torch.no_grad():
        # use_cache left on: the segments come from the position ids alone, cache or not.
        packed = model(input_ids=input_ids, position_ids=position_ids).logits
        start = 0
        for n in lengths:
            alone = model(input_ids=input_ids[:, start : start + n]).logits
            torch.testing.assert_close(packed[:, start : start + n], alone)
            start += n
        # A padded batch goes to plain sdpa.
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, 50:] = 0
        segmented = model(input_ids=input_ids, attention_mask=attention_mask).logits
        model.set_attn_implementation("sdpa")
        reference = model(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(segmented[0], reference[0])
    torch.testing.assert_close(segmented[1, :50], reference[1, :50])
