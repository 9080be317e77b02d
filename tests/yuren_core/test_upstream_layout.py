"""The renderer gives exactly the ids and labels upstream's training code gave, for either dummy-prefix setting.

The oracle (``upstream_oracle``) re-implements upstream's tokenization on
``sentencepiece`` directly; the renderer goes through the transformers
tokenizer the checkpoint ships. Both read the same sentencepiece model: the
tiny base's own (no dummy prefix, as Baichuan-7B) and a copy with the dummy
prefix switched on.
"""

from __future__ import annotations

import json
import shutil

import pytest
from sentencepiece import sentencepiece_model_pb2
from upstream_oracle import UpstreamSlowTokenizer, upstream_conversation

from yuren_core.chatml import render
from yuren_core.constants import IM_END, IM_START
from yuren_core.vocab import extend_tokenizer, load_tokenizer, special_ids

# Whitespace at every place upstream's tokenizer treated specially, and pieces that start with a space.
EDGE_CASES = [
    [
        {"from": "system", "value": "  sys  \n"},
        {"from": "human", "value": " \n lead and trail \t\n"},
        {"from": "gpt", "value": "  indented\n    code\n\n"},
        {"from": "user", "value": "12345 67"},
        {"from": "gpt", "value": "\n"},
    ],
    [{"from": "system", "value": ""}, {"from": "human", "value": "   "}, {"from": "gpt", "value": ""}],
    [{"from": "human", "value": "你好\n\n"}, {"from": "gpt", "value": " 你好！ "}],
]


@pytest.fixture(scope="module")
def sentencepiece_variants(tiny_dir, tokenizer, tmp_path_factory) -> dict[bool, tuple]:
    """``{add_dummy_prefix: (renderer's tokenizer, oracle)}`` for both settings of the tiny model."""
    source = tiny_dir / "base"
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((source / "tokenizer.model").read_bytes())
    assert proto.normalizer_spec.add_dummy_prefix is False, "the tiny tokenizer mirrors Baichuan-7B: no dummy prefix"

    proto.normalizer_spec.add_dummy_prefix = True
    flipped = tmp_path_factory.mktemp("prefixed")
    (flipped / "tokenizer.model").write_bytes(proto.SerializeToString())
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("add_prefix_space", None)  # load_tokenizer must take the setting from the model itself
    (flipped / "tokenizer_config.json").write_text(json.dumps(config))
    shutil.copy(source / "special_tokens_map.json", flipped)
    prefixed = load_tokenizer(str(flipped))
    extend_tokenizer(prefixed)
    saved = tmp_path_factory.mktemp("prefixed-saved")
    prefixed.save_pretrained(saved)
    prefixed = load_tokenizer(str(saved))

    variants = {}
    for dummy_prefix, (hf_tokenizer, model_file) in {
        False: (tokenizer, source / "tokenizer.model"),
        True: (prefixed, flipped / "tokenizer.model"),
    }.items():
        ids = special_ids(hf_tokenizer)
        oracle = UpstreamSlowTokenizer(model_file.read_bytes(), {IM_START: ids.im_start, IM_END: ids.im_end})
        assert oracle.sp.encode("a", out_type=str)[0].startswith("▁") is dummy_prefix
        variants[dummy_prefix] = (hf_tokenizer, oracle)
    return variants


def assert_all_equal(variants, dummy_prefix: bool, conversations: list[list[dict]]) -> None:
    hf_tokenizer, oracle = variants[dummy_prefix]
    mismatched = []
    for index, turns in enumerate(conversations):
        ours = render(hf_tokenizer, turns)
        ids, labels = upstream_conversation(oracle, turns)
        if (ours.input_ids, ours.labels) != (ids, labels):
            mismatched.append(index)
    equal = len(conversations) - len(mismatched)
    assert not mismatched, f"{equal}/{len(conversations)} equal; first differing conversation: {mismatched[0]}"


@pytest.mark.parametrize("dummy_prefix", [False, True])
def test_edge_cases_match_upstream(sentencepiece_variants, dummy_prefix):
    assert_all_equal(sentencepiece_variants, dummy_prefix, EDGE_CASES)


@pytest.mark.parametrize("dummy_prefix", [False, True])
def test_project_data_matches_upstream(sentencepiece_variants, dummy_prefix, project_conversations):
    assert_all_equal(sentencepiece_variants, dummy_prefix, [r["conversations"] for r in project_conversations])


@pytest.mark.parametrize("dummy_prefix", [False, True])
def test_upstream_sample_matches_upstream(sentencepiece_variants, dummy_prefix, upstream_conversations):
    assert len(upstream_conversations) == 300
    assert_all_equal(sentencepiece_variants, dummy_prefix, [r["conversations"] for r in upstream_conversations])


def test_the_dummy_prefix_setting_matters(sentencepiece_variants, upstream_conversations):
    """Guard against a vacuous oracle: the two settings really tokenize upstream's data differently."""
    turns = upstream_conversations[0]["conversations"]
    assert (
        render(sentencepiece_variants[False][0], turns).input_ids
        != render(sentencepiece_variants[True][0], turns).input_ids
    )


@pytest.mark.parametrize("dummy_prefix", [False, True])
def test_truncation_matches_upstream(sentencepiece_variants, dummy_prefix, upstream_conversations):
    """Upstream's own cut (``model_max_length`` 4096: 4095 tokens, the last an eos labelled eos), at every offset."""
    hf_tokenizer, oracle = sentencepiece_variants[dummy_prefix]
    long = [turn for record in upstream_conversations for turn in record["conversations"]]
    ours = render(hf_tokenizer, long, max_length=4096)
    ids, labels = upstream_conversation(oracle, long, 4096)
    assert len(render(hf_tokenizer, long).input_ids) > 4096
    assert (ours.input_ids, ours.labels) == (ids, labels)
    assert len(ids) == 4095 and ids[-1] == labels[-1] == oracle.eos_id
    # Every cut of a short multi-turn conversation: inside user and assistant text, on <|im_end|>, on an eos, none.
    multi_turn = [r["conversations"] for r in upstream_conversations if len(r["conversations"]) >= 5]
    few = min(multi_turn, key=lambda turns: sum(len(turn["value"]) for turn in turns))
    length = len(render(hf_tokenizer, few).input_ids)
    for max_length in range(2, length + 3):
        ours = render(hf_tokenizer, few, max_length=max_length)
        assert (ours.input_ids, ours.labels) == upstream_conversation(oracle, few, max_length), max_length
