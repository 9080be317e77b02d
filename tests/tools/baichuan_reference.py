"""A tiny checkpoint in baichuan-inc/Baichuan-7B's own layout, and Baichuan-7B's forward re-implemented on torch alone.

The layout is what Baichuan's hub repository holds: ``config.json`` with
``model_type: "baichuan"``, ``architectures: ["BaiChuanForCausalLM"]`` and an
``auto_map`` to its own code; each layer's query, key and value in one
``self_attn.W_pack.weight`` of shape [3 * hidden, hidden]; the rotary
``inv_freq`` buffers transformers 4.29 saved; the tokenizer as
``BaiChuanTokenizer`` over a plain sentencepiece ``tokenizer.model``. Its Python
files only leave a mark when run: a converter must never run them.

:func:`baichuan_forward` follows Baichuan-7B's ``modeling_baichuan.py``
(inference branch) step by step, splitting ``W_pack``'s output at forward time
as it does, so it checks a converter without sharing any of its code.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.nn import functional as F

HIDDEN = 64
HEADS = 4
LAYERS = 2
INTERMEDIATE = 160
EPS = 1e-6
# Baichuan-7B's files that hold Python code; each writes MARKER beside itself when imported.
CODE_FILES = ("configuration_baichuan.py", "modeling_baichuan.py", "tokenization_baichuan.py")
MARKER = "code-was-run"
WEIGHT_FORMATS = ("bin", "sharded_bin", "safetensors", "sharded_safetensors")


def baichuan_weights(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random Baichuan-7B-layout weights (fp32) with the tiny sizes above; norms away from 1 so they count."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=0.05):
        return torch.randn(*shape, generator=generator) * scale

    head_dim = HIDDEN // HEADS
    weights = {"model.embed_tokens.weight": randn(vocab_size, HIDDEN, scale=1.0)}
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for i in range(LAYERS):
        layer = f"model.layers.{i}"
        weights |= {
            f"{layer}.self_attn.W_pack.weight": randn(3 * HIDDEN, HIDDEN, scale=0.2),
            f"{layer}.self_attn.o_proj.weight": randn(HIDDEN, HIDDEN, scale=0.2),
            f"{layer}.self_attn.rotary_emb.inv_freq": inv_freq.clone(),
            f"{layer}.mlp.gate_proj.weight": randn(INTERMEDIATE, HIDDEN, scale=0.2),
            f"{layer}.mlp.up_proj.weight": randn(INTERMEDIATE, HIDDEN, scale=0.2),
            f"{layer}.mlp.down_proj.weight": randn(HIDDEN, INTERMEDIATE, scale=0.2),
            f"{layer}.input_layernorm.weight": 1 + randn(HIDDEN, scale=0.3),
            f"{layer}.post_attention_layernorm.weight": 1 + randn(HIDDEN, scale=0.3),
        }
    weights["model.norm.weight"] = 1 + randn(HIDDEN, scale=0.3)
    weights["lm_head.weight"] = randn(vocab_size, HIDDEN, scale=0.2)
    return weights


def baichuan_config(vocab_size: int) -> dict:
    """config.json as Baichuan-7B's hub repository has it (BaiChuanConfig saved by transformers 4.29)."""
    return {
        "architectures": ["BaiChuanForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_baichuan.BaiChuanConfig",
            "AutoModelForCausalLM": "modeling_baichuan.BaiChuanForCausalLM",
        },
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": 4096,
        "model_type": "baichuan",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "pad_token_id": 0,
        "rms_norm_eps": EPS,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.29.1",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def _save_weights(weights: dict[str, torch.Tensor], out: Path, weight_format: str) -> None:
    """Write ``weights`` as one file or two shards with an index, in pickle or safetensors form."""
    safetensors = weight_format.endswith("safetensors")
    name = "model.safetensors" if safetensors else "pytorch_model.bin"

    def write(tensors, path):
        if safetensors:
            save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})
        else:
            torch.save(tensors, path)

    if not weight_format.startswith("sharded"):
        write(weights, out / name)
        return
    stem, suffix = name.split(".")
    names = list(weights)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, keys in enumerate(halves, start=1):
        shard = f"{stem}-{i:05d}-of-{len(halves):05d}.{suffix}"
        write({k: weights[k] for k in keys}, out / shard)
        weight_map |= dict.fromkeys(keys, shard)
    total = sum(t.numel() * t.element_size() for t in weights.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / f"{name}.index.json").write_text(json.dumps(index, indent=2))


def build_baichuan(
    tokenizer_model: Path, out: Path, *, weight_format: str = "bin", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Path:
    """Write a tiny Baichuan-7B-layout checkpoint over the sentencepiece model ``tokenizer_model`` to ``out``.

    The weights are :func:`baichuan_weights` in ``dtype``; config.json says float32 whatever they are, as
    Baichuan-7B's does over its half-precision weights.
    """
    import sentencepiece as spm

    out.mkdir(parents=True)
    vocab_size = spm.SentencePieceProcessor(model_file=str(tokenizer_model)).get_piece_size()
    (out / "config.json").write_text(json.dumps(baichuan_config(vocab_size), indent=2))
    weights = {name: tensor.to(dtype) for name, tensor in baichuan_weights(vocab_size, seed).items()}
    _save_weights(weights, out, weight_format)
    shutil.copyfile(tokenizer_model, out / "tokenizer.model")

    def token(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False}

    tokenizer_config = {
        "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaiChuanTokenizer", None]},
        # Not BaiChuanTokenizer's default (True): a converter must carry the source's setting over.
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": token("<s>"),
        "eos_token": token("</s>"),
        "unk_token": token("<unk>"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656,
        "sp_model_kwargs": {},
        "tokenizer_class": "BaiChuanTokenizer",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    special = {"bos_token": token("<s>"), "eos_token": token("</s>"), "unk_token": token("<unk>")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    for name in CODE_FILES:
        (out / name).write_text(f"from pathlib import Path\nPath(__file__).with_name({MARKER!r}).touch()\n")
    return out


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + EPS))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@torch.no_grad()
def baichuan_forward(weights: dict[str, torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [batch, seq, vocab] of Baichuan-7B's forward (fp32, no cache, causal mask) with ``weights``."""
    batch, length = input_ids.shape
    head_dim = HIDDEN // HEADS
    hidden = weights["model.embed_tokens.weight"][input_ids]
    causal = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)
    for i in range(LAYERS):
        layer = f"model.layers.{i}"
        residual = hidden
        x = _rms_norm(hidden, weights[f"{layer}.input_layernorm.weight"])
        # Baichuan's own split: the fused projection's last dim read as (3, hidden), then moved to the front.
        proj = F.linear(x, weights[f"{layer}.self_attn.W_pack.weight"])
        proj = proj.unflatten(-1, (3, HIDDEN)).unsqueeze(0).transpose(0, -2).squeeze(-2)
        q, k, v = (proj[j].view(batch, length, HEADS, head_dim).transpose(1, 2) for j in range(3))
        inv_freq = weights[f"{layer}.self_attn.rotary_emb.inv_freq"]
        freqs = torch.einsum("i,j->ij", torch.arange(length, dtype=inv_freq.dtype), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        scores = q @ k.transpose(2, 3) / math.sqrt(head_dim) + causal
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, HIDDEN)
        hidden = residual + F.linear(attended, weights[f"{layer}.self_attn.o_proj.weight"])
        residual = hidden
        x = _rms_norm(hidden, weights[f"{layer}.post_attention_layernorm.weight"])
        gate = F.silu(F.linear(x, weights[f"{layer}.mlp.gate_proj.weight"]))
        up = F.linear(x, weights[f"{layer}.mlp.up_proj.weight"])
        hidden = residual + F.linear(gate * up, weights[f"{layer}.mlp.down_proj.weight"])
    hidden = _rms_norm(hidden, weights["model.norm.weight"])
    return F.linear(hidden, weights["lm_head.weight"])
