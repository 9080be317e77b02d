"""Upstream YuRen's text-SFT tokenization, re-implemented on ``sentencepiece`` alone: the tests' oracle.

Upstream's ``build_datasets._generate_and_tokenize_conversations`` formatted
each turn as one string with the ChatML tokens typed in and encoded it with
transformers 4.30's slow ``LlamaTokenizer`` (``<|im_start|>`` and
``<|im_end|>`` added as plain-string additional special tokens). That
tokenizer, as this module reproduces it:

- cuts the text at every special token it knows (``<s>``, ``</s>``, ``<unk>`` and
  the added ones), leftmost and longest first;
- strips the whitespace on both sides of an added special token given as a
  plain string; ``<s>``, ``</s>`` and ``<unk>`` are ``AddedToken``s with no
  stripping;
- encodes every non-empty piece left with ``SentencePieceProcessor.encode``,
  on its own (so each gets the dummy prefix when the model has one).

Nothing here goes through transformers or the renderer, so the renderer can
be checked against it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import sentencepiece as spm

IGNORE = -100
# ShareGPT roles as upstream mapped them; "user" is in upstream's own sample data too.
ROLES = {"human": "user", "user": "user", "system": "system", "gpt": "assistant"}


class UpstreamSlowTokenizer:
    """``LlamaTokenizer.encode(text, add_special_tokens=False)`` of transformers 4.30, on sentencepiece."""

    def __init__(self, model_proto: bytes, added: Mapping[str, int]):
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.eos_id = self.sp.eos_id()
        self.stripping = dict(added)
        self.ids = {
            self.sp.id_to_piece(self.sp.unk_id()): self.sp.unk_id(),
            self.sp.id_to_piece(self.sp.bos_id()): self.sp.bos_id(),
            self.sp.id_to_piece(self.eos_id): self.eos_id,
            **self.stripping,
        }
        alternatives = sorted(self.ids, key=len, reverse=True)
        self.pattern = re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")

    def encode(self, text: str) -> list[int]:
        chunks = [c for c in self.pattern.split(text) if c]
        for i, chunk in enumerate(chunks):
            if chunk in self.stripping:
                if i + 1 < len(chunks):
                    chunks[i + 1] = chunks[i + 1].lstrip()
                if i > 0:
                    chunks[i - 1] = chunks[i - 1].rstrip()
        ids: list[int] = []
        for chunk in chunks:
            if chunk in self.ids:
                ids.append(self.ids[chunk])
            elif chunk:
                ids += self.sp.encode(chunk)
        return ids


def upstream_conversation(
    tokenizer: UpstreamSlowTokenizer, turns: Sequence[Mapping], model_max_length: int | None = None
) -> tuple[list[int], list[int]]:
    """Ids and labels of one ShareGPT conversation as upstream's training code made them."""
    input_ids: list[int] = []
    labels: list[int] = []
    for turn in turns:
        role = ROLES[turn["from"].lower()]
        value = turn["value"]
        if role == "system":
            text = f"<|im_start|>system\n{value}<|im_end|>"
        elif role == "user":
            text = f"\n<|im_start|>user\n{value}<|im_end|>\n<|im_start|>assistant\n"
        else:
            text = f"{value}<|im_end|>"
        ids = tokenizer.encode(text)
        input_ids += ids
        labels += ids if role == "assistant" else [IGNORE] * len(ids)
        if role == "assistant":
            input_ids.append(tokenizer.eos_id)
            labels.append(tokenizer.eos_id)
    if model_max_length is not None:
        input_ids, labels = input_ids[: model_max_length - 1], labels[: model_max_length - 1]
    if input_ids[-1] != tokenizer.eos_id:
        input_ids[-1] = labels[-1] = tokenizer.eos_id
    if not any(label > IGNORE for label in labels):
        labels[18:24] = input_ids[18:24]
    return input_ids, labels
