"""Baichuan-7B in its own layout (``baichuan-inc/Baichuan-7B``) rewritten in the LLaMA layout YuRen's base uses.

Baichuan-7B is LLaMA's architecture stored differently: each layer's query, key
and value projections are one fused Linear, ``self_attn.W_pack`` of shape
[3 * hidden, hidden]. Its attention splits ``W_pack``'s output into three
``hidden``-wide parts in the order query, key, value, so rows [0:h] are
``q_proj``, [h:2h] ``k_proj`` and [2h:3h] ``v_proj``. Rotary embedding is
LLaMA's (rotate-half, base 10000, not configurable there), the MLP and the
RMS norms are LLaMA's, and every other weight already has LLaMA's name. The
tokenizer is a plain sentencepiece model, written out as LLaMA's tokenizer
with the source's special tokens. This is the layout of
``fireballoon/baichuan-llama-7b``, the base upstream started from.

The checkpoint's own Python code (``modeling_baichuan.py`` and friends) is
never run: ``config.json`` is read as JSON, weights with safetensors or
``torch.load(weights_only=True)``. Only Baichuan-7B (``BaiChuanForCausalLM``)
converts: Baichuan-13B and Baichuan 2 share ``model_type: "baichuan"`` but
use ALiBi or a normalized output head, which LLaMA's layout cannot express.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from sentencepiece import sentencepiece_model_pb2
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import cached_file

from yuren_core.atomic import atomic_directory
from yuren_core.vocab import load_tokenizer

ARCHITECTURE = "BaiChuanForCausalLM"
# Fields without which the model's shape is unknown; the rest have BaiChuanConfig's defaults.
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# BaiChuanConfig's defaults, for a config.json that leaves a field out.
DEFAULTS = {
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.02,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
# Baichuan-7B's rotary base: fixed in its modeling code, absent from its config.
ROPE_THETA = 10000.0
# Where the weights may be, in the order transformers prefers them.
WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
# 7B in bfloat16 is ~14 GB: written as a few shards, as the hub's LLaMA checkpoints are.
MAX_SHARD_SIZE = "5GB"


class BaichuanConversionError(RuntimeError):
    """The source cannot be converted; the message names the file, the field and what to do."""


def _fetch(source: str, name: str) -> Path | None:
    """``name`` inside ``source`` (a directory or hub id) as a local path, or None where the source has no such file."""
    try:
        found = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError) as error:
        where = (
            f"cannot read {name} in {source!r}"
            if Path(source).exists()
            else f"{source!r} is not a local directory, and reading {name} from the Hugging Face hub failed"
        )
        raise BaichuanConversionError(f"{where} ({type(error).__name__}: {str(error).splitlines()[0]})") from error
    return None if found is None else Path(found)


def read_baichuan_config(source: str) -> dict:
    """``source``'s config.json, checked to be Baichuan-7B's, with BaiChuanConfig's defaults filled in."""
    path = _fetch(source, "config.json")
    if path is None:
        raise BaichuanConversionError(
            f"{source}: no config.json (neither a local directory nor a hub repository holding one); "
            "pass the directory or hub id of Baichuan-7B"
        )
    config = json.loads(path.read_text(encoding="utf-8"))
    where = f"{source}/config.json"
    if config.get("model_type") != "baichuan":
        hint = (
            " A LLaMA-layout model needs no conversion: pass it to `prepare-base-model --base`."
            if config.get("model_type") == "llama"
            else ""
        )
        raise BaichuanConversionError(
            f"{where}: model_type is {config.get('model_type')!r}, not 'baichuan'; "
            f"this command converts baichuan-inc/Baichuan-7B.{hint}"
        )
    if config.get("architectures") != [ARCHITECTURE]:
        raise BaichuanConversionError(
            f"{where}: architectures is {config.get('architectures')!r}, not Baichuan-7B's [{ARCHITECTURE!r}]; "
            "Baichuan-13B and Baichuan 2 (BaichuanForCausalLM) use ALiBi or a normalized output head "
            "and have no LLaMA layout"
        )
    missing = [field for field in REQUIRED_FIELDS if not isinstance(config.get(field), int)]
    if missing:
        raise BaichuanConversionError(f"{where}: {', '.join(missing)} missing or not an integer")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise BaichuanConversionError(
            f"{where}: hidden_size {config['hidden_size']} is not a multiple of "
            f"num_attention_heads {config['num_attention_heads']}"
        )
    return {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}


def llama_config(baichuan: dict) -> LlamaConfig:
    """The LLaMA config of the same model as ``baichuan`` (a checked Baichuan-7B config.json)."""
    return LlamaConfig(
        vocab_size=baichuan["vocab_size"],
        hidden_size=baichuan["hidden_size"],
        intermediate_size=baichuan["intermediate_size"],
        num_hidden_layers=baichuan["num_hidden_layers"],
        num_attention_heads=baichuan["num_attention_heads"],
        num_key_value_heads=baichuan["num_attention_heads"],
        hidden_act=baichuan["hidden_act"],
        max_position_embeddings=baichuan["max_position_embeddings"],
        initializer_range=baichuan["initializer_range"],
        rms_norm_eps=baichuan["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=baichuan["bos_token_id"],
        eos_token_id=baichuan["eos_token_id"],
        pad_token_id=baichuan["pad_token_id"],
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        architectures=["LlamaForCausalLM"],
    )


def _weight_shards(source: str) -> list[Path]:
    """The files holding ``source``'s weights: one file, or every shard an index names."""
    for name in WEIGHT_FILES:
        path = _fetch(source, name)
        if path is None:
            continue
        if not name.endswith(".index.json"):
            return [path]
        weight_map = json.loads(path.read_text(encoding="utf-8")).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise BaichuanConversionError(f"{source}/{name}: no weight_map naming the shards")
        shards = []
        for shard in sorted(set(weight_map.values())):
            shard_path = _fetch(source, shard)
            if shard_path is None:
                raise BaichuanConversionError(f"{source}/{name} names {shard}, which is missing")
            shards.append(shard_path)
        return shards
    raise BaichuanConversionError(f"{source}: no weights (looked for {', '.join(WEIGHT_FILES)})")


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    """One weight file's tensors, read as data only (a pickle's code is never run)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BaichuanConversionError(
            f"{path}: not a weights-only PyTorch checkpoint ({type(error).__name__}: {str(error).splitlines()[0]})"
        ) from error


def llama_state_dict(tensors: dict[str, torch.Tensor], hidden: int, source: str) -> dict[str, torch.Tensor]:
    """``tensors`` (Baichuan-7B's names) under LLaMA's names: each ``W_pack`` split into q, k and v."""
    converted = {}
    for name, tensor in tensors.items():
        if name.endswith(".rotary_emb.inv_freq"):
            # A buffer transformers 4.29 saved; LLaMA recomputes it from rope_theta.
            continue
        if not name.endswith(".self_attn.W_pack.weight"):
            converted[name] = tensor
            continue
        if tuple(tensor.shape) != (3 * hidden, hidden):
            raise BaichuanConversionError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, not [3 * hidden_size, hidden_size] = "
                f"[{3 * hidden}, {hidden}] as config.json's hidden_size says"
            )
        prefix = name.removesuffix("W_pack.weight")
        for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
            converted[f"{prefix}{part}.weight"] = tensor[i * hidden : (i + 1) * hidden]
    return converted


def _llama_model(config: LlamaConfig, state: dict[str, torch.Tensor], source: str) -> LlamaForCausalLM:
    """A LLaMA model holding ``state``'s tensors themselves (no random init, no second copy in memory)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise BaichuanConversionError(
            f"{source}: the weights are not Baichuan-7B's with config.json's sizes "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for name, parameter in model.state_dict().items():
        if parameter.shape != state[name].shape:
            raise BaichuanConversionError(
                f"{source}: {name} has shape {tuple(state[name].shape)}, config.json's sizes give "
                f"{tuple(parameter.shape)}"
            )
    model.load_state_dict(state, assign=True)
    return model


def _special_token(value) -> str | None:
    """A special token as tokenizer_config.json stores it: a string, or an AddedToken's fields."""
    return value.get("content") if isinstance(value, dict) else value


def tokenizer_settings(source: str, config: dict) -> tuple[Path, dict]:
    """``source``'s sentencepiece model and the tokenizer_config.json of a LLaMA tokenizer with its special tokens.

    The special tokens and whether to add bos/eos come from the source's
    tokenizer_config.json and special_tokens_map.json (BaiChuanTokenizer's
    defaults where they say nothing); bos and eos must be the pieces
    config.json's ids name.
    """
    model_file = _fetch(source, "tokenizer.model")
    if model_file is None:
        raise BaichuanConversionError(f"{source}: no tokenizer.model (Baichuan-7B's sentencepiece model)")
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as error:
        raise BaichuanConversionError(f"{source}/tokenizer.model: not a sentencepiece model ({error})") from error
    settings = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = _fetch(source, name)
        if path is not None:
            settings.update(json.loads(path.read_text(encoding="utf-8")))
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": _special_token(settings.get("bos_token", "<s>")),
        "eos_token": _special_token(settings.get("eos_token", "</s>")),
        "unk_token": _special_token(settings.get("unk_token", "<unk>")),
        "add_bos_token": settings.get("add_bos_token", True),
        "add_eos_token": settings.get("add_eos_token", False),
        "legacy": False,
        "clean_up_tokenization_spaces": settings.get("clean_up_tokenization_spaces", False),
        "model_max_length": config["max_position_embeddings"],
    }
    if settings.get("pad_token") is not None:
        tokenizer_config["pad_token"] = _special_token(settings["pad_token"])
    pieces = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    for field in ("bos_token", "eos_token"):
        token, wanted = tokenizer_config[field], config[f"{field}_id"]
        if pieces.get(token) != wanted:
            raise BaichuanConversionError(
                f"{source}: the tokenizer's {field} {token!r} is not piece {wanted} of tokenizer.model, "
                f"as config.json's {field}_id says"
            )
    return model_file, tokenizer_config


def write_tokenizer(out: Path, model_file: Path, tokenizer_config: dict) -> None:
    """Write the LLaMA tokenizer :func:`tokenizer_settings` describes to ``out``, fast ``tokenizer.json`` included."""
    shutil.copyfile(model_file, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    # Loaded the project's one way (it follows the model's dummy-prefix setting) and saved again: adds the
    # tokenizer.json the rest of YuRen reads.
    load_tokenizer(str(out)).save_pretrained(out)


def convert_baichuan(
    source: str, output: str | Path, *, overwrite: bool = False, max_shard_size=MAX_SHARD_SIZE
) -> Path:
    """Write Baichuan-7B at ``source`` (a directory or hub id) to ``output`` in LLaMA layout; return ``output``."""
    target = Path(output)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise BaichuanConversionError(f"--output {target} exists and is not empty; pass --overwrite to replace it")
    print(f"[1/3] reading {source}", flush=True)
    baichuan = read_baichuan_config(source)
    model_file, tokenizer_config = tokenizer_settings(source, baichuan)
    tensors = {}
    for shard in _weight_shards(source):
        tensors.update(_load_shard(shard))
    state = llama_state_dict(tensors, baichuan["hidden_size"], source)
    # The model holds the stored tensors themselves, so it is saved in their dtype (whatever config.json says).
    model = _llama_model(llama_config(baichuan), state, source)
    with atomic_directory(target) as staging:
        print(f"[2/3] writing the LLaMA layout to {staging}", flush=True)
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        write_tokenizer(staging, model_file, tokenizer_config)
        print(f"[3/3] moving into place at {target}", flush=True)
    return target
