"""The chat template saved with the tokenizer renders, through ``apply_chat_template``, exactly what ``render`` does."""

from __future__ import annotations

import jinja2
import pytest
from transformers import AutoTokenizer

from yuren_core.chatml import USER, Image, chat_template, render, to_messages
from yuren_core.modeling import YuRenConfig

IMAGE = {"type": "image"}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


HANDWRITTEN = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "You are YuRen."}, {"role": "user", "content": "你好，请介绍一下你自己。"}],
    [{"role": "system", "content": "  padded system \n"}, {"role": "user", "content": "\n  spaced  \n\n"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": " Blue. \n"},
        {"role": "user", "content": "Another?"},
    ],
    [{"role": "human", "content": "aliases"}, {"role": "gpt", "content": "ok"}, {"role": "user", "content": "again"}],
    [{"role": "user", "content": [IMAGE, text("\nWhat is this?")]}],
    [{"role": "user", "content": [text("What is this?\n"), IMAGE]}],
    [{"role": "user", "content": [IMAGE]}],
    [{"role": "user", "content": [text("Compare "), IMAGE, text(" and\n "), IMAGE, text(" please.")]}],
    [{"role": "user", "content": [IMAGE, IMAGE, text("two at once")]}],
    [
        {"role": "system", "content": [text("Describe images.")]},
        {"role": "user", "content": [IMAGE, text("\nfirst")]},
        {"role": "assistant", "content": [text("a red square")]},
        {"role": "user", "content": [text("and this one?"), IMAGE]},
    ],
    [{"role": "user", "content": "code:\n```python\nprint('hi')\n```\n"}],
    [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "then me"}],
]


def role_content(conversation) -> list[dict]:
    """A ShareGPT record as role/content messages, cut after its last user turn (a generation prompt)."""
    messages = to_messages(conversation)
    last_user = max(i for i, m in enumerate(messages) if m.role == USER)
    return [
        {
            "role": m.role,
            "content": [IMAGE if isinstance(p, Image) else text(p) for p in m.parts],
        }
        for m in messages[: last_user + 1]
    ]


def template_ids(tokenizer, messages) -> list[int]:
    result = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(result["input_ids"] if hasattr(result, "keys") else result)


@pytest.fixture(scope="module")
def saved_tokenizer(fused_model_dir):
    """The tokenizer as vLLM or a harness loads it: plain ``AutoTokenizer`` on the saved checkpoint."""
    return AutoTokenizer.from_pretrained(fused_model_dir)


@pytest.fixture(scope="module")
def image_seq_len(fused_model_dir) -> int:
    return YuRenConfig.from_pretrained(fused_model_dir).image_seq_len


def test_saved_template_matches_render_on_handwritten_conversations(saved_tokenizer, image_seq_len):
    assert saved_tokenizer.chat_template  # build_fused_model set it and save_pretrained kept it
    for messages in HANDWRITTEN:
        expected = render(saved_tokenizer, messages, image_seq_len=image_seq_len, add_generation_prompt=True)
        assert template_ids(saved_tokenizer, messages) == expected.input_ids, messages


def test_saved_template_matches_render_on_dataset_conversations(
    saved_tokenizer, image_seq_len, project_conversations, upstream_conversations
):
    records = project_conversations + upstream_conversations[:150]
    for record in records:
        messages = role_content(record["conversations"])
        expected = render(saved_tokenizer, messages, image_seq_len=image_seq_len, add_generation_prompt=True)
        assert template_ids(saved_tokenizer, messages) == expected.input_ids, record["conversations"][:2]


def test_template_follows_a_dummy_prefix_tokenizer(fused_model_dir, image_seq_len):
    # A tokenizer that gives each lone piece sentencepiece's dummy prefix (as LLaMA's does) gets pieces
    # written after a space; inside one long string it would otherwise not prefix them.
    tokenizer = AutoTokenizer.from_pretrained(fused_model_dir, add_prefix_space=True)
    tokenizer.chat_template = chat_template(tokenizer, image_seq_len)
    for messages in HANDWRITTEN:
        expected = render(tokenizer, messages, image_seq_len=image_seq_len, add_generation_prompt=True)
        assert template_ids(tokenizer, messages) == expected.input_ids, messages


def test_text_only_template_refuses_images(prepared_base):
    tokenizer = AutoTokenizer.from_pretrained(prepared_base)
    messages = [{"role": "user", "content": "hi"}]
    assert template_ids(tokenizer, messages) == render(tokenizer, messages, add_generation_prompt=True).input_ids
    with pytest.raises(jinja2.TemplateError, match="reads text only"):
        template_ids(tokenizer, [{"role": "user", "content": [IMAGE, text("look")]}])


def test_template_refuses_unknown_roles_and_images_outside_user_turns(saved_tokenizer):
    with pytest.raises(jinja2.TemplateError, match="unknown role tool"):
        template_ids(saved_tokenizer, [{"role": "tool", "content": "x"}, {"role": "user", "content": "y"}])
    with pytest.raises(jinja2.TemplateError, match="only supported in user turns"):
        template_ids(saved_tokenizer, [{"role": "system", "content": [IMAGE]}, {"role": "user", "content": "y"}])
