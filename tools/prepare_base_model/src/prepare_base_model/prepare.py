"""Add YuRen's ChatML and image tokens to a LLaMA-layout base model (what ``prepare-base-model`` runs).

Loads the base (a local directory or a hub id), extends the vocabulary (see
:func:`yuren_core.vocab.extend_vocabulary`) and writes tokenizer + model as
safetensors. The output appears only once complete: it is written to a
temporary directory beside it and renamed into place.
"""

from __future__ import annotations

from pathlib import Path

from yuren_core.atomic import atomic_directory
from yuren_core.chatml import chat_template
from yuren_core.constants import DEFAULT_BASE_MODEL
from yuren_core.vocab import extend_vocabulary, load_tokenizer


class BaseModelNotFound(RuntimeError):
    """The base model could be loaded neither from disk nor from the hub."""


def _load_base(base: str):
    from transformers import AutoModelForCausalLM

    try:
        tokenizer = load_tokenizer(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    except (OSError, ValueError) as error:
        where = (
            f"the local directory {base!r} holds no loadable model"
            if Path(base).exists()
            else f"{base!r} is not a local directory, and loading it from the Hugging Face hub failed"
        )
        raise BaseModelNotFound(
            f"could not load the base model: {where} ({type(error).__name__}: {str(error).splitlines()[0]}). "
            "Download the base once on a machine with network access (e.g. `huggingface-cli download "
            f"{DEFAULT_BASE_MODEL} --local-dir models/baichuan-llama-7b`) and pass `--base models/baichuan-llama-7b`."
        ) from error
    return tokenizer, model


def prepare(base: str, output: Path, *, overwrite: bool = False) -> Path:
    """Extend ``base``'s vocabulary and write the result to ``output``; return ``output``."""
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} already exists and is not empty; pass --overwrite to replace it")
    steps = 4
    print(f"[1/{steps}] loading base model {base}", flush=True)
    tokenizer, model = _load_base(base)
    print(f"[2/{steps}] extending the vocabulary ({len(tokenizer)} tokens)", flush=True)
    added = extend_vocabulary(model, tokenizer)
    # Text only for now; build_fused_model replaces it with one that also writes image blocks.
    tokenizer.chat_template = chat_template(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    print(f"          added {added} special tokens; embeddings now {rows} rows", flush=True)

    with atomic_directory(output) as staging:
        print(f"[3/{steps}] writing to {staging}", flush=True)
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)
        print(f"[4/{steps}] moving into place at {output}", flush=True)
    return output
