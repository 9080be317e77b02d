"""One decode step of a transformers LLaMA stack: one new token, the stack's arithmetic in fewer calls.

A decode step of a small model on a CPU is mostly per-call work rather than
arithmetic: ``LlamaModel.forward`` builds a mask and a rotary row on every
call, each layer and its attention pass keyword plumbing through wrappers,
and every matrix product wakes the CPU's thread team again. One new token
with no padding attends to the whole cache, so :class:`LlamaStep` needs no
mask; it runs each layer on the token's ``[1, hidden]`` row, in the order
``LlamaDecoderLayer`` does, with these differences in form only:

* the query, key and value projections (and the MLP's gate and up
  projections) read one weight, built once, whose rows are the three (two)
  modules' weights: one product instead of three. The modules keep their
  weights as views of it, so memory does not grow (:func:`fuse_linears`);
* the rotary embedding turns query and key heads in one pass, from a table
  computed once per answer (:meth:`LlamaStep.rotary`);
* sdpa attention is called directly, and keys and values are written
  straight into the cache layer.

Each result is bit for bit the layer's own: the fused product is kept only
where a probe shows it equal to the separate ones on this device, and the
rotary form differs from ``rotate_half`` by a sign moved into the table
(an exact operation). The norms, the MLP's down projection and activation, and
eager attention are the modules' own calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaModel,
    eager_attention_forward,
)

# Attention implementations that read a missing mask as "attend to every key" for a one-token query
# (sdpa turns off is_causal for a single query; eager adds no mask); flash / flex take other inputs.
MASKLESS_ATTENTION = ("sdpa", "eager")


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"))


def _owns_its_memory(weight: torch.Tensor) -> bool:
    """Whether freeing ``weight``'s storage frees its bytes: torch allocated it (resizable), for this tensor alone.

    A weight mapped from a safetensors file is not: fusing it would add a copy
    while the file's mapping stays.
    """
    storage = weight.untyped_storage()
    return storage.resizable() and weight.storage_offset() == 0 and storage.nbytes() == weight.nbytes


def _stacked(weights: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The weight that ``weights`` are the row blocks of, in order, if they tile one storage exactly (fused before)."""
    first = weights[0]
    storage = first.untyped_storage()
    offset = 0
    for weight in weights:
        if weight.untyped_storage().data_ptr() != storage.data_ptr() or weight.storage_offset() != offset:
            return None
        if not weight.is_contiguous():
            return None
        offset += weight.numel()
    if offset * first.element_size() != storage.nbytes():
        return None
    rows = sum(weight.shape[0] for weight in weights)
    return first.new_empty(0).set_(storage, 0, (rows, first.shape[1]))


@torch.no_grad()
def stacking_is_exact(weights: Sequence[torch.Tensor]) -> bool:
    """Whether ``F.linear`` with ``weights`` stacked row-wise gives bit for bit their separate products, on their device.

    Checked on one random input: a kernel that sums in another order for the taller weight shows in some output.
    """
    first = weights[0]
    x = torch.randn(1, first.shape[1], generator=torch.Generator().manual_seed(0)).to(first.device, first.dtype)
    return torch.equal(F.linear(x, torch.cat(weights)), torch.cat([F.linear(x, w) for w in weights], dim=-1))


@torch.no_grad()
def fuse_linears(linears: Sequence[nn.Module], probes: dict | None = None) -> torch.Tensor | None:
    """One weight for bias-free ``nn.Linear`` s of one input: their weights' rows stacked; the modules keep views of it.

    Returns ``None`` and changes nothing unless fusing changes only the layout:
    plain ``nn.Linear`` s without bias or hooks, on one device and dtype, each
    owning its weight's memory (so the separate weights are freed, not
    duplicated), and :func:`stacking_is_exact` on this device (checked once
    per shape, remembered in ``probes``). Weights fused before (views tiling
    one weight, in order) give that weight back.
    """
    if not all(type(linear) is nn.Linear and linear.bias is None and not _hooked(linear) for linear in linears):
        return None
    weights = [linear.weight for linear in linears]
    first = weights[0]
    if any(w.device != first.device or w.dtype != first.dtype or w.shape[1] != first.shape[1] for w in weights):
        return None
    stacked = _stacked(weights)
    if stacked is None and not all(_owns_its_memory(w) for w in weights):
        return None
    key = (tuple(w.shape for w in weights), first.dtype, first.device)
    if probes is None:
        probes = {}
    if key not in probes:
        probes[key] = stacking_is_exact(weights)
    if not probes[key]:
        return None
    if stacked is not None:
        return stacked
    fused = torch.cat(weights)
    start = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        linear.weight.data = fused[start : start + rows]
        start += rows
    return fused


class LlamaStep:
    """Logits for one new token of a ``LlamaForCausalLM``-shaped model (``model.model``, ``model.lm_head``).

    Build it only where :meth:`supported` holds. Building it fuses each
    layer's projections where :func:`fuse_linears` allows (the model's
    weights become views; their values do not change).
    """

    def __init__(self, model):
        self.stack = model.model
        self.head = model.lm_head
        config = model.config.get_text_config(decoder=True)
        # Slicing a ModuleList builds a new module: done once here, not per step as LlamaModel.forward does.
        self.layers = tuple(self.stack.layers[: config.num_hidden_layers])
        attention = self.layers[0].self_attn
        self.heads = config.num_attention_heads
        self.query_and_key_heads = config.num_attention_heads + config.num_key_value_heads
        self.head_dim = attention.head_dim
        # Direct sdpa without grouped heads; otherwise transformers' function, which regroups them.
        self.direct_sdpa = config._attn_implementation == "sdpa" and attention.num_key_value_groups == 1
        self.attention = ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)
        probes: dict = {}
        self.qkv = [
            fuse_linears((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj), probes)
            for layer in self.layers
        ]
        # Only where the MLP's own forward has no hooks: a fused MLP is not called as a module.
        self.gate_up = [
            None if _hooked(layer.mlp) else fuse_linears((layer.mlp.gate_proj, layer.mlp.up_proj), probes)
            for layer in self.layers
        ]
        # Each fused module and where its weight's view starts (see still_fused).
        self._views = []
        for layer, qkv, gate_up in zip(self.layers, self.qkv, self.gate_up, strict=True):
            fused = []
            if qkv is not None:
                fused += (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
            if gate_up is not None:
                fused += (layer.mlp.gate_proj, layer.mlp.up_proj)
            self._views += [(linear, linear.weight.data_ptr()) for linear in fused]

    @staticmethod
    def supported(model) -> bool:
        """Whether one-token steps of ``model`` can skip ``LlamaModel.forward`` and the layers' own forwards.

        Holds for transformers' ``LlamaModel`` of ``LlamaDecoderLayer`` s (exactly:
        subclasses may change the forward) with sdpa or eager attention and the
        default rotary embedding, whose values depend on the position alone, and
        without hooks on the modules whose ``forward`` the step replaces (the
        stack, its layers and their attention: an accelerate offload hook, say).
        Norms, the output and down projections and the activation are called as
        modules, and a projection or MLP with a hook is left unfused and called
        as a module, so their hooks run. Not for flash / flex attention
        (their inputs are not a plain mask) nor for dynamic or long-context
        rotary variants (their tables change with the sequence length).
        """
        config = model.config.get_text_config(decoder=True)
        stack = getattr(model, "model", None)
        if not (
            type(stack) is LlamaModel
            and config._attn_implementation in MASKLESS_ATTENTION
            and (config.rope_parameters or {}).get("rope_type", "default") == "default"
        ):
            return False
        replaced = [stack]
        for layer in stack.layers:
            if type(layer) is not LlamaDecoderLayer or type(layer.self_attn) is not LlamaAttention:
                return False
            replaced += (layer, layer.self_attn)
        return not any(_hooked(module) for module in replaced)

    def still_fused(self) -> bool:
        """Whether every fused projection still reads its fused weight.

        A model cast since (``model.to(dtype)``), or given new weight tensors,
        has not: its modules read tensors that the fused ones do not follow.
        Weights changed in place (an optimizer step, ``load_state_dict``)
        still are.
        """
        return all(linear.weight.data_ptr() == pointer for linear, pointer in self._views)

    @property
    def fused_layers(self) -> int:
        """How many layers read one fused weight for their query, key and value projections."""
        return sum(weight is not None for weight in self.qkv)

    @torch.inference_mode()
    def rotary(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary rows for positions ``0 .. length - 1``: the stack's cos, and its sin with the first half negated.

        ``rotate_half(x) * sin`` (``rotate_half(x)`` is ``x``'s halves swapped,
        the first negated) equals ``x.roll(half) * signed_sin`` element for
        element: the negation moves from ``x`` into the table, exactly.
        """
        like = self.stack.embed_tokens.weight[:1]
        cos, sin = self.stack.rotary_emb(like, position_ids=torch.arange(length, device=like.device)[None])
        half = self.head_dim // 2
        return cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)

    def __call__(self, token: torch.Tensor, position: int, cache: Cache, rotary) -> torch.Tensor:
        """Logits ``[1, vocab]`` for ``token`` ``[1, 1]`` at ``position``, appending to ``cache`` (preallocated layers).

        ``rotary`` is :meth:`rotary` covering ``position``.
        """
        hidden = self.stack.embed_tokens(token).view(1, -1)
        cos, sin = rotary[0][position], rotary[1][position]
        for index, layer in enumerate(self.layers):
            hidden = self.layer(index, layer, hidden, cos, sin, cache.layers[index])
        return self.head(self.stack.norm(hidden))

    def layer(self, index: int, layer: LlamaDecoderLayer, hidden, cos, sin, cache_layer) -> torch.Tensor:
        """``layer`` on one token's ``hidden`` row ``[1, hidden_size]``: the same arithmetic as its ``forward``."""
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        qkv = self.qkv[index]
        if qkv is not None:
            heads = F.linear(x, qkv).view(-1, self.head_dim)  # query heads, key heads, value heads
            qk, value = heads[: self.query_and_key_heads], heads[self.query_and_key_heads :]
        else:
            qk = torch.cat((attn.q_proj(x), attn.k_proj(x)), dim=-1).view(-1, self.head_dim)
            value = attn.v_proj(x).view(-1, self.head_dim)
        qk = qk * cos + qk.roll(self.head_dim // 2, -1) * sin
        query, key = qk[: self.heads, None], qk[self.heads :, None]
        keys, values = cache_layer.update(key[None], value[None, :, None])
        if self.direct_sdpa:
            out = F.scaled_dot_product_attention(query[None], keys, values, scale=attn.scaling)
        else:
            out, _ = self.attention(attn, query[None], keys, values, None, dropout=0.0, scaling=attn.scaling)
        hidden = hidden + attn.o_proj(out.reshape(1, -1))
        x = layer.post_attention_layernorm(hidden)
        mlp, gate_up = layer.mlp, self.gate_up[index]
        if gate_up is None:
            return hidden + mlp(x)
        gate, up = F.linear(x, gate_up).split(mlp.gate_proj.out_features, dim=-1)
        return hidden + mlp.down_proj(mlp.act_fn(gate) * up)
