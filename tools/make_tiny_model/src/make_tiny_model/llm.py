"""A tiny LLaMA-architecture base model, on disk exactly as a LLaMA-compatible base is.

Real weights cannot be downloaded here, so tests, benchmarks and the demo use
this stand-in through the same loading code the 7B base goes through:
``config.json`` + ``model.safetensors`` + a sentencepiece ``tokenizer.model``
(BPE with byte fallback and Baichuan-7B's normalizer settings, so any Chinese or
English text round-trips and splits like Baichuan's).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def train_tokenizer(lines: Iterable[str], vocab_size: int = 2000) -> bytes:
    """Train a sentencepiece BPE model on ``lines`` with Baichuan-7B's settings; return the serialized model.

    Baichuan-7B's ``tokenizer.model`` is BPE with byte fallback and split digits,
    normalizes nothing (rule ``identity``, extra whitespace kept) and adds no
    dummy prefix; the stand-in does the same, so text splits into pieces the way
    the real base splits it (the ChatML layout depends on the dummy prefix).
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        # Rare characters fall back to bytes instead of taking up the tiny vocabulary.
        character_coverage=0.98,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def corpus_lines(paths: Iterable[Path]) -> list[str]:
    """Every non-empty line of every turn in ShareGPT JSON files (comment records skipped)."""
    lines = []
    for path in paths:
        for record in json.loads(Path(path).read_text(encoding="utf-8")):
            for turn in record.get("conversations", []):
                lines += [line for line in turn["value"].split("\n") if line.strip()]
    return lines


def build_tiny_base(
    out_dir: Path,
    corpus: Iterable[str],
    *,
    vocab_size: int = 2000,
    hidden_size: int = 64,
    intermediate_size: int = 192,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny random LLaMA base (weights + sentencepiece tokenizer) to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sp_model = train_tokenizer(corpus, vocab_size)
    (out_dir / "tokenizer.model").write_bytes(sp_model)
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        # transformers 5 builds the tokenizer with a dummy prefix unless told otherwise; follow the model.
        "add_prefix_space": False,
        "model_max_length": 4096,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))

    processor = spm.SentencePieceProcessor(model_proto=sp_model)
    config = LlamaConfig(
        vocab_size=processor.get_piece_size(),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    return out_dir
