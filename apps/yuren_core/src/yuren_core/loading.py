"""Assembling a fused model from its parts, and loading a saved one for training or serving.

:func:`build_fused_model` joins a LLaMA text model (stage-1 output, or a
prepared base) and an open_clip vision tower: at the start of stage 2, and at
the start of stage 3 when it starts from a stage-1 model and a projector file.
Every checkpoint saved after that is self-contained and :func:`load_model`
reads it, full precision or quantized, with no hub access.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from os import PathLike
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, GenerationConfig
from transformers.utils import GENERATION_CONFIG_NAME

from .chatml import chat_template
from .loading_reports import reported_by_the_caller
from .modeling import YuRenConfig, YuRenForCausalLM
from .quantized import saved_quantization
from .upstream import is_upstream_checkpoint, load_upstream
from .vision import ImageProcessor, load_open_clip_vision
from .vocab import load_tokenizer, special_ids

# Kept in full precision when quantizing: the tower and projector are small and
# quantizing them costs image understanding; the head decides every token.
UNQUANTIZED_MODULES = ["vision_tower", "mm_projector", "lm_head"]
# Checkpoint keys a LLaMA base cannot have: the parts build_fused_model adds.
VISION_PREFIXES = ("vision_tower.", "mm_projector.")
# Config keys that describe the base's class rather than its architecture.
BASE_CLASS_KEYS = ("model_type", "architectures", "transformers_version")


def build_fused_model(
    base_path: str | PathLike,
    clip_id: str,
    *,
    vision_feature_layer: int = -2,
    image_pad_to_square: bool = False,
    dtype: torch.dtype | str = "auto",
):
    """Assemble a new YuRen model from a prepared base and an open_clip vision tower.

    ``base_path`` is ``prepare-base-model`` output (LLaMA weights + a tokenizer
    that already has YuRen's special tokens); nothing is added to it: its
    vocabulary, embeddings and generation config are used as they are.
    ``clip_id`` is an open_clip identifier (``hf-hub:org/repo`` or
    ``local-dir:/path``); its vision tower weights are copied in and the text
    tower is dropped. The projector starts random. ``dtype`` defaults to the
    base's stored dtype. The tokenizer gets the chat template for images of
    this tower (:func:`yuren_core.chatml.chat_template`). Returns ``(model, tokenizer, image_processor)`` on CPU.
    """
    base_path = str(base_path)
    base_config = AutoConfig.from_pretrained(base_path)
    if isinstance(base_config, YuRenConfig):
        raise ValueError(f"{base_path} is already a YuRen model (model_type 'yuren'); load it with load_model")
    if base_config.model_type != "llama":
        raise ValueError(
            f"{base_path}/config.json has model_type {base_config.model_type!r}; the base must be a LLaMA-layout model"
        )
    tokenizer = load_tokenizer(base_path)
    ids = special_ids(tokenizer)
    if len(tokenizer) > base_config.vocab_size:
        raise ValueError(
            f"the tokenizer in {base_path} has {len(tokenizer)} tokens but the model only {base_config.vocab_size} "
            "embedding rows; run `prepare-base-model` on the base, which grows both together"
        )

    tower = load_open_clip_vision(clip_id)
    settings = {k: v for k, v in base_config.to_dict().items() if k not in BASE_CLASS_KEYS}
    config = YuRenConfig(
        **settings,
        open_clip_config=tower.open_clip_config,
        image_preprocess_config=tower.preprocess_config,
        image_pad_to_square=image_pad_to_square,
        vision_feature_layer=vision_feature_layer,
        img_start_token_id=ids.img_start,
        img_patch_token_id=ids.img_patch,
        img_end_token_id=ids.img_end,
    )
    model, info = YuRenForCausalLM.from_pretrained(base_path, config=config, dtype=dtype, output_loading_info=True)
    not_vision = [key for key in info["missing_keys"] if not key.startswith(VISION_PREFIXES)]
    if not_vision or info["unexpected_keys"]:
        raise ValueError(
            f"the weights in {base_path} do not match its LLaMA config: missing {sorted(not_vision)[:5]}, "
            f"unexpected {sorted(info['unexpected_keys'])[:5]}"
        )
    model.vision_tower.load_state_dict(tower.module.state_dict())
    # Saved with the tokenizer from here on: now the template can write image blocks of the right length.
    tokenizer.chat_template = chat_template(tokenizer, config.image_seq_len)
    return model, tokenizer, ImageProcessor.from_config(config)


def default_dtype() -> torch.dtype:
    """bf16 where a GPU is present, fp32 on CPU (whose bf16 matmuls are slow or missing)."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def quantization_config(
    *,
    load_8bit: bool = False,
    load_4bit: bool = False,
    dtype: torch.dtype,
    quant_type: str = "nf4",
    double_quant: bool = False,
    skip_modules: Sequence[str] = tuple(UNQUANTIZED_MODULES),
) -> BitsAndBytesConfig | None:
    """The bitsandbytes config for an 8-bit or 4-bit load (``None`` for neither), serving's and QLoRA's alike.

    4-bit weights are ``quant_type`` (nf4 or fp4), optionally double-quantized,
    computing in ``dtype``; ``skip_modules`` stay unquantized.
    """
    if load_8bit and load_4bit:
        raise ValueError("choose one of load_8bit and load_4bit, not both")
    if load_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(skip_modules))
    if load_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=list(skip_modules),
        )
    return None


def return_large_frees_to_the_system() -> None:
    """Make glibc's malloc serve allocations of 1 MiB and more with mmap, so freeing them returns the memory.

    glibc raises its mmap threshold (up to 32 MiB) after a large block is
    freed; the weights read one by one while quantizing then come from the
    heap and stay resident after being freed: the peak of a quantizing load
    became that of the whole full-precision checkpoint. A fixed threshold keeps
    each freed weight out of the process. Process-wide, and a no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1 << 20)


@contextmanager
def unmapped_weights(path: str) -> Iterator[dict | None]:
    """Lazy tensors of the local safetensors checkpoint at ``path``, read with ``pread`` rather than a memory map.

    transformers maps checkpoint files whole, and every page it reads stays
    resident while the file is mapped; when weights are quantized on loading,
    that is the whole full-precision checkpoint held beside the quantized copy.
    Read this way, only the tensor being quantized is held. Yields ``None``
    (load as usual) for a hub id or a checkpoint not in safetensors.
    """
    directory = Path(path)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({directory / name for name in json.loads(index.read_text())["weight_map"].values()})
    elif (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    else:
        yield None
        return
    return_large_frees_to_the_system()
    with ExitStack() as stack:
        weights = {}
        for file in files:
            handle = stack.enter_context(safe_open(str(file), framework="pt", device="cpu", backend="pread"))
            weights.update({name: handle.get_slice(name) for name in handle.keys()})
        yield weights


def checked_saved_bits(path: str, saved_bits: int, *, load_8bit: bool, load_4bit: bool) -> tuple[bool, bool]:
    """``(load_8bit, load_4bit)`` for a checkpoint saved in ``saved_bits``; refuses flags asking for the other width."""
    asked = 8 if load_8bit else 4 if load_4bit else None
    if asked is not None and asked != saved_bits:
        raise ValueError(
            f"{path} holds {saved_bits}-bit weights (config.json's quantization_config) but {asked}-bit loading was "
            f"asked for; load it without load_8bit/load_4bit, or quantize the full-precision checkpoint to {asked} bits"
        )
    return saved_bits == 8, saved_bits == 4


def load_model(
    path: str | PathLike,
    *,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | dict | None = None,
    dtype: torch.dtype | str | None = None,
):
    """Load a saved YuRen checkpoint; return ``(model, tokenizer, image_processor)``, the model in eval mode.

    ``path`` is a directory or hub id holding a YuRen checkpoint, or one in
    upstream's released format (``model_type: "multimodal_llama"``, read by
    :func:`yuren_core.upstream.load_upstream`).
    ``dtype`` defaults to :func:`default_dtype`, or fp16 with ``load_8bit``
    (bitsandbytes' int8 matmul computes in fp16 and warns on every call given
    anything else). With ``load_8bit`` or ``load_4bit`` the language model's
    linear layers are quantized while the vision tower, projector and output
    head stay in ``dtype``. ``device_map`` is passed to ``from_pretrained``
    (e.g. ``"auto"``).

    A checkpoint written by ``quantize`` (its ``config.json`` has a
    ``quantization_config``) loads its saved 8-bit or 4-bit weights directly,
    as if ``load_8bit`` or ``load_4bit`` were given; asking for the other is an error.
    """
    path = str(path)
    if is_upstream_checkpoint(path):
        if dtype is None:
            dtype = torch.float16 if load_8bit else default_dtype()
        # transformers has no config class for multimodal_llama and would say so while finding the tokenizer's.
        with reported_by_the_caller():
            tokenizer = load_tokenizer(path)
        quantization = quantization_config(load_8bit=load_8bit, load_4bit=load_4bit, dtype=dtype)
        model = load_upstream(path, tokenizer, dtype=dtype, device_map=device_map, quantization_config=quantization)
        model.eval()
        return model, tokenizer, ImageProcessor.from_config(model.config)
    config = AutoConfig.from_pretrained(path)
    if not isinstance(config, YuRenConfig):
        raise ValueError(
            f"{path}/config.json has model_type {config.model_type!r}, not 'yuren': it is not a YuRen checkpoint "
            "(a prepared base must first be fused with build_fused_model and trained)"
        )
    saved_bits = saved_quantization(config)
    if saved_bits is not None:
        load_8bit, load_4bit = checked_saved_bits(path, saved_bits, load_8bit=load_8bit, load_4bit=load_4bit)
    if dtype is None:
        dtype = torch.float16 if load_8bit else default_dtype()
    # A saved quantized checkpoint brings its own quantization_config (transformers reads it from config.json).
    quantization = None if saved_bits else quantization_config(load_8bit=load_8bit, load_4bit=load_4bit, dtype=dtype)
    with unmapped_weights(path) if quantization is not None else nullcontext() as weights:
        model = YuRenForCausalLM.from_pretrained(
            None if weights is not None else path,
            config=config,
            dtype=dtype,
            device_map=device_map,
            quantization_config=quantization,
            state_dict=weights,
        )
    if weights is not None and (Path(path) / GENERATION_CONFIG_NAME).is_file():
        # Loaded from tensors, not from the directory: its generation settings come separately.
        model.generation_config = GenerationConfig.from_pretrained(path)
    model.eval()
    return model, load_tokenizer(path), ImageProcessor.from_config(model.config)


def load_causal_lm(path: str | PathLike, tokenizer, **from_pretrained_kwargs):
    """``AutoModelForCausalLM.from_pretrained(path, ...)`` that also reads upstream's released format.

    ``tokenizer`` is the checkpoint's (an upstream checkpoint takes its image
    token ids from it). The trainers load their starting model through this.
    """
    if is_upstream_checkpoint(path):
        return load_upstream(path, tokenizer, **from_pretrained_kwargs)
    return AutoModelForCausalLM.from_pretrained(str(path), **from_pretrained_kwargs)
