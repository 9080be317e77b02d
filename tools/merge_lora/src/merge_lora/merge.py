"""Fold a trained (Q)LoRA adapter into its full-precision base model (what ``merge-lora`` runs).

    merge-lora --base-model-path dist/yuren-7b-base --lora-path dist/yuren-7b-stage1 \\
               --target-model-path dist/yuren-7b-stage1-merged

The base must be the full-precision (bf16/fp16/fp32) model the adapter was
trained on, never a 4-bit or 8-bit one: merging into quantized weights would
round the update away. The result is a plain model (safetensors) with the
tokenizer saved beside it (the adapter's, which the trainer saved, else the
base's). It is written to a temporary directory beside the target and renamed
into place once complete.
"""

from __future__ import annotations

import json
from pathlib import Path

from yuren_core.atomic import atomic_directory
from yuren_core.cli import torch_dtype


class MergeError(RuntimeError):
    """The inputs cannot be merged; the message says which one and why."""


def _check_full_precision(base_model_path: str) -> None:
    config_file = Path(base_model_path) / "config.json"
    if not config_file.is_file():
        raise MergeError(f"--base-model-path {base_model_path}: no config.json; pass the base model's directory")
    quantization = json.loads(config_file.read_text()).get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "quantized")
        raise MergeError(
            f"--base-model-path {base_model_path} holds {method} quantized weights; merge into the full-precision "
            "base the adapter was trained from (e.g. the `prepare-base-model` output), never a 4-bit/8-bit one"
        )


def _tokenizer_source(lora_path: str, base_model_path: str) -> str:
    has_tokenizer = any((Path(lora_path) / name).is_file() for name in ("tokenizer.json", "tokenizer.model"))
    return lora_path if has_tokenizer else base_model_path


def merge(
    base_model_path: str,
    lora_path: str,
    target_model_path: str | Path,
    *,
    dtype: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Merge the adapter at ``lora_path`` into ``base_model_path``; write model and tokenizer to ``target_model_path``."""
    from peft import PeftModel

    from yuren_core.loading import load_causal_lm
    from yuren_core.vocab import load_tokenizer

    target = Path(target_model_path)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise MergeError(f"--target-model-path {target} exists and is not empty; pass --overwrite to replace it")
    if not (Path(lora_path) / "adapter_config.json").is_file():
        raise MergeError(f"--lora-path {lora_path}: no adapter_config.json; pass the directory the trainer saved")
    _check_full_precision(base_model_path)

    print(f"[1/4] loading the base model from {base_model_path}", flush=True)
    # Also reads upstream's released model, the base of an adapter trained from it.
    base = load_causal_lm(base_model_path, load_tokenizer(base_model_path), dtype=torch_dtype(dtype))
    tokenizer = load_tokenizer(_tokenizer_source(lora_path, base_model_path))
    rows = base.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise MergeError(
            f"the tokenizer has {len(tokenizer)} tokens but {base_model_path} only {rows} embedding rows: "
            "this is not the base the adapter was trained on"
        )
    print(f"[2/4] loading the adapter from {lora_path}", flush=True)
    model = PeftModel.from_pretrained(base, lora_path)
    print("[3/4] merging", flush=True)
    merged = model.merge_and_unload()

    with atomic_directory(target) as staging:
        print(f"[4/4] saving to {target}", flush=True)
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target
