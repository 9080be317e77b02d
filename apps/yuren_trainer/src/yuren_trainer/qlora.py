"""QLoRA: a 4-bit base with LoRA adapters, and trainable rows for YuRen's new tokens.

The settings come from a JSON file (``apps/yuren_trainer/config/qlora.json``)
in upstream's layout, plus the quantization keys upstream hard-coded::

    {"r": 64, "lora_alpha": 16, "lora_dropout": 0.05,
     "lora_target_modules": ["q_proj", ...],
     "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true}

The 4-bit compute dtype follows the precision flags (bf16, fp16 or fp32), as
the DeepSpeed configs do, so the file and the flags cannot disagree.

LoRA alone would leave the embeddings of ``<|im_start|>``, ``<|im_end|>`` and
the image tokens at their initial value: the base never saw them, and the
input embeddings and the output head are not LoRA targets. Their rows in both
are therefore trained too (peft's ``trainable_token_indices``), which keeps the
adapter small (a few rows, not two whole vocab-sized matrices) and merges into
the base like the LoRA weights do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig

from yuren_core.constants import PAD
from yuren_core.loading import UNQUANTIZED_MODULES, quantization_config
from yuren_core.vocab import special_ids

logger = logging.getLogger(__name__)


class QLoRAConfigError(ValueError):
    """The QLoRA settings file is missing, malformed or has unknown or wrongly typed keys."""


@dataclass(frozen=True)
class QLoRASettings:
    """LoRA and 4-bit quantization settings, as read from the settings file."""

    r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_use_double_quant: bool = True
    # Modules left unquantized (and untouched by LoRA), besides the input embeddings.
    llm_int8_skip_modules: tuple[str, ...] = field(default=tuple(UNQUANTIZED_MODULES))


_TYPES = {
    "r": int,
    "lora_alpha": int,
    "lora_dropout": float,
    "lora_target_modules": list,
    "bnb_4bit_quant_type": str,
    "bnb_4bit_use_double_quant": bool,
    "llm_int8_skip_modules": list,
}


def read_settings(path: str | Path) -> QLoRASettings:
    """Read and check a QLoRA settings file; errors name the file and the key."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QLoRAConfigError(f"--lora_config {path}: no such file") from None
    except json.JSONDecodeError as error:
        raise QLoRAConfigError(f"--lora_config {path}:{error.lineno}: malformed JSON: {error.msg}") from None
    if not isinstance(raw, dict):
        raise QLoRAConfigError(f"--lora_config {path}: expected a JSON object")
    unknown = sorted(set(raw) - set(_TYPES))
    if unknown:
        raise QLoRAConfigError(f"--lora_config {path}: unknown key(s) {unknown}; known: {sorted(_TYPES)}")
    values = {}
    for key, value in raw.items():
        expected = _TYPES[key]
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if expected is list:
            ok = ok and all(isinstance(item, str) for item in value)
        if not ok:
            raise QLoRAConfigError(f"--lora_config {path}: key {key!r} must be {expected.__name__}, got {value!r}")
        values[key] = tuple(value) if expected is list else value
    if values.get("bnb_4bit_quant_type", "nf4") not in ("nf4", "fp4"):
        raise QLoRAConfigError(f"--lora_config {path}: 'bnb_4bit_quant_type' must be 'nf4' or 'fp4'")
    return QLoRASettings(**values)


def base_quantization_config(settings: QLoRASettings, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """The 4-bit bitsandbytes config for loading the base (:func:`yuren_core.loading.quantization_config`)."""
    return quantization_config(
        load_4bit=True,
        dtype=compute_dtype,
        quant_type=settings.bnb_4bit_quant_type,
        double_quant=settings.bnb_4bit_use_double_quant,
        skip_modules=settings.llm_int8_skip_modules,
    )


def new_token_ids(tokenizer) -> list[int]:
    """Ids of the tokens YuRen added to the base vocabulary (ChatML, image and pad tokens; eos is the base's)."""
    ids = special_ids(tokenizer)
    added = [getattr(ids, f.name) for f in fields(ids) if f.name not in ("eos", "pad")]
    # Upstream's release has no <|pad|>: a base token stands in for it, and is not new.
    if PAD in tokenizer.get_vocab():
        added.append(ids.pad)
    return sorted(added)


def _module_name(model, module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name.rsplit(".", 1)[-1]
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def apply_qlora(
    model,
    settings: QLoRASettings,
    *,
    trainable_token_ids: list[int],
    gradient_checkpointing: bool,
    modules_to_save: list[str] | None = None,
) -> PeftModel:
    """Wrap a 4-bit ``model`` with LoRA adapters; the rows of ``trainable_token_ids`` train in both embeddings.

    Modules named in ``modules_to_save`` (e.g. stage 3's ``mm_projector``) train whole and are saved in the adapter.
    """
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    token_rows = {_module_name(model, model.get_input_embeddings()): trainable_token_ids}
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        token_rows[_module_name(model, output)] = trainable_token_ids
    lora = LoraConfig(
        r=settings.r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        trainable_token_indices=token_rows,
        modules_to_save=modules_to_save,
    )
    model = get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info(
        "QLoRA: r=%d on %s, new-token rows trainable in %s; %d of %d parameters train",
        settings.r,
        ",".join(settings.lora_target_modules),
        ",".join(token_rows),
        trainable,
        total,
    )
    return model
