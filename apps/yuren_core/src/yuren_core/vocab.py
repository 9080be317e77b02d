"""Tokenizer loading and the vocabulary extension YuRen makes to its base model.

The base (Baichuan-7B in LLaMA layout) knows none of the ChatML or image tokens.
:func:`extend_vocabulary` adds them, grows the embeddings to a multiple of 128
(faster matmuls under tensor parallelism) and starts every new row at the mean
of the trained rows, so the new tokens begin as an "average" token instead of
noise that would dominate the first steps of training.

torch, and transformers' tokenizer classes (which load it), are imported in
the functions that use them: the token ids, and the ChatML renderer built on
them, also serve the web UI over a remote server, which needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken
from transformers.utils import cached_file

from .constants import (
    IM_END,
    IM_START,
    IMG_END,
    IMG_PATCH,
    IMG_START,
    MAX_POSITION_EMBEDDINGS,
    PAD,
    SPECIAL_TOKENS,
    VOCAB_MULTIPLE,
)


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the tokens the renderer and the model insert by id."""

    im_start: int
    im_end: int
    img_start: int
    img_patch: int
    img_end: int
    pad: int
    eos: int


def load_tokenizer(path: str):
    """Load a tokenizer from a directory or hub id.

    Use this (``from_pretrained``) rather than ``LlamaTokenizer(vocab_file=...)``,
    which in transformers 5 silently ignores the sentencepiece file. A
    checkpoint that ships only the sentencepiece ``tokenizer.model`` gets the
    model's own dummy-prefix setting: transformers 5 would otherwise add the
    prefix even where the model (Baichuan-7B's) has none, and every text piece
    would start with a token the model never saw there.
    """
    from transformers import AutoTokenizer  # here, not with the module: it loads torch

    kwargs = {}
    if cached_file(path, "tokenizer.json", _raise_exceptions_for_missing_entries=False) is None:
        model_file = cached_file(path, "tokenizer.model", _raise_exceptions_for_missing_entries=False)
        if model_file is not None:
            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(Path(model_file).read_bytes())
            kwargs["add_prefix_space"] = proto.normalizer_spec.add_dummy_prefix
    return AutoTokenizer.from_pretrained(path, **kwargs)


def special_ids(tokenizer) -> SpecialIds:
    """Look up YuRen's special token ids, failing clearly on a tokenizer that lacks them.

    The pad id is ``<|pad|>``'s; a tokenizer without it (upstream's release has
    none) gets :func:`fallback_pad_id`.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab and t != PAD]
    if missing:
        raise ValueError(
            f"the tokenizer lacks YuRen's special tokens {missing}; "
            "run `prepare-base-model` on the base model first (it adds them)"
        )
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; YuRen ends every assistant turn with it")
    inserted = {vocab[t] for t in SPECIAL_TOKENS if t != PAD}
    return SpecialIds(
        im_start=vocab[IM_START],
        im_end=vocab[IM_END],
        img_start=vocab[IMG_START],
        img_patch=vocab[IMG_PATCH],
        img_end=vocab[IMG_END],
        pad=vocab[PAD] if PAD in vocab else fallback_pad_id(tokenizer, inserted),
        eos=tokenizer.eos_token_id,
    )


def fallback_pad_id(tokenizer, inserted: set[int]) -> int:
    """A pad id for a tokenizer without ``<|pad|>``: its own pad token, else its unknown token.

    Never one of ``inserted`` (the ChatML and image ids the renderer and model
    insert by id): padding with ``<|im_start|>``, as upstream's training did,
    makes padding indistinguishable from turns. The unknown token is safe: byte
    fallback means text never encodes to it.
    """
    for name in ("pad_token_id", "unk_token_id"):
        candidate = getattr(tokenizer, name, None)
        if candidate is not None and candidate not in inserted:
            return candidate
    raise ValueError(
        f"the tokenizer has no {PAD} and neither a pad nor an unknown token that could stand in for it; "
        "run `prepare-base-model` on the base model (it adds the pad token)"
    )


def extend_tokenizer(tokenizer) -> int:
    """Add YuRen's special tokens (and the pad token) to ``tokenizer``; return how many were new."""
    vocab = tokenizer.get_vocab()
    new = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS if t not in vocab]
    added = tokenizer.add_tokens(new, special_tokens=True) if new else 0
    tokenizer.pad_token = PAD
    return added


def padded_vocab_size(num_tokens: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """The smallest multiple of ``multiple`` that holds ``num_tokens``."""
    return -(-num_tokens // multiple) * multiple


def extend_vocabulary(model, tokenizer, multiple: int = VOCAB_MULTIPLE) -> int:
    """Add the special tokens to ``tokenizer`` and grow ``model``'s embeddings to match.

    Rows for new ids (added tokens and the padding up to ``multiple``) start at
    the mean of the base tokenizer's rows, in both the input embeddings and an
    untied output head. Running it again changes nothing. Returns the number of
    tokens added.
    """
    import torch

    base_tokens = len(tokenizer)
    added = extend_tokenizer(tokenizer)
    old_rows = model.get_input_embeddings().weight.shape[0]
    new_rows = padded_vocab_size(max(len(tokenizer), old_rows), multiple)
    with torch.no_grad():
        if new_rows != old_rows:
            model.resize_token_embeddings(new_rows, mean_resizing=False)
        if added or new_rows != old_rows:
            # Everything from the first id the base tokenizer did not use is "new".
            first_new = min(base_tokens, old_rows)
            matrices = [model.get_input_embeddings().weight]
            output = model.get_output_embeddings()
            if output is not None and output.weight is not matrices[0]:
                matrices.append(output.weight)
            for weight in matrices:
                weight[first_new:] = weight[:first_new].mean(dim=0, keepdim=True)

    config = model.config
    config.vocab_size = new_rows
    config.max_position_embeddings = MAX_POSITION_EMBEDDINGS
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        # Stop at the end of the assistant turn; the eos after it is for training.
        model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id]
    return added
