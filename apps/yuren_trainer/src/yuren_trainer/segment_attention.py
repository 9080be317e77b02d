"""Attention that stays inside each packed conversation without computing the masked-out part.

``--packing True`` turns it on (see ``benchmarks/README.md`` for what it buys):
packed rows carry per-conversation ``position_ids`` and no ``attention_mask``. With
``sdpa``, transformers turns that into a dense block-diagonal mask over the
whole row, and the kernel computes every score of the row x row square only to
mask most of it out: on a 4096-token row of ~1000-token conversations that is
about 4x the attention work of the conversations themselves, and 8x once the
causal triangle is counted (an explicit mask stops the kernel from skipping
it). This implementation runs causal attention per conversation ("varlen"):

* on CUDA, one ``torch.nn.attention.varlen.varlen_attn`` call over the whole
  batch (FlashAttention's variable-length kernel);
* elsewhere, ``scaled_dot_product_attention(is_causal=True)`` per conversation.

Selected by name after :func:`register`:
``model.set_attn_implementation(SEGMENT_ATTENTION)``. Anything that is not a
packed training forward (a padding mask, a KV cache, no ``position_ids``) goes
to transformers' own ``sdpa`` unchanged, so the same model also evaluates and
generates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SEGMENT_ATTENTION = "yuren_segment_sdpa"


def segment_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``[batch, seq]``: True where a conversation starts (position 0, or any break in the count)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def _segment_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None, **kwargs):
    """No mask for packed rows (the attention finds the conversations itself); ``sdpa``'s mask for padded ones."""
    if attention_mask is None or (attention_mask.shape[-1] == kv_length and bool(attention_mask.all())):
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        **kwargs,
    )


def segment_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal attention per conversation of packed rows; ``sdpa`` for everything else.

    ``query`` is ``[batch, heads, seq, head_dim]``; returns ``[batch, seq, heads, head_dim]`` as
    transformers' attention functions do.
    """
    packed = (
        attention_mask is None
        and position_ids is not None
        and query.shape[2] == key.shape[2] > 1
        and dropout == 0.0
        and position_ids.shape[-1] == query.shape[2]
    )
    if not packed:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, length, head_dim = query.shape
    position_ids = position_ids.expand(batch, -1)
    gqa = key.shape[1] != heads
    if query.is_cuda:
        return _varlen(query, key, value, position_ids, scaling, gqa), None
    # All rows as one sequence of conversations (every row starts one), cut with split(): its backward is one
    # concatenation, where slicing the 4D tensors per conversation would allocate a full-size zero gradient per slice.
    starts = torch.nonzero(segment_starts(position_ids).flatten()).flatten().tolist() + [batch * length]
    lengths = [end - start for start, end in zip(starts[:-1], starts[1:], strict=True)]
    # Token-major pieces ([tokens, heads, head_dim]) are views of the projections, and sdpa returns its output
    # token-major for them: the pieces go in and the output comes out without a transposing copy either way.
    parts = [
        F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            is_causal=True, scale=scaling, enable_gqa=gqa,
        )[0].transpose(0, 1)
        for q, k, v in zip(*(_token_major(states).split(lengths) for states in (query, key, value)), strict=True)
    ]  # fmt: skip
    return torch.cat(parts).view(batch, length, heads, head_dim), None


def _token_major(states: torch.Tensor) -> torch.Tensor:
    """``[batch, heads, seq, head_dim]`` as ``[batch * seq, heads, head_dim]`` (a view for transformers' projections)."""
    batch, heads, length, head_dim = states.shape
    return states.transpose(1, 2).reshape(batch * length, heads, head_dim)


def _varlen(query, key, value, position_ids, scaling, gqa) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    batch, heads, length, head_dim = query.shape
    starts = torch.nonzero(segment_starts(position_ids).flatten()).flatten()
    cu_seqlens = torch.cat([starts, starts.new_tensor([batch * length])]).to(torch.int32)
    max_length = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    output = varlen_attn(
        _token_major(query),
        _token_major(key),
        _token_major(value),
        cu_seqlens,
        cu_seqlens,
        max_length,
        max_length,
        scale=scaling,
        window_size=(-1, 0),
        enable_gqa=gqa,
    )
    return output.view(batch, length, heads, head_dim)


def register() -> str:
    """Make ``SEGMENT_ATTENTION`` available to every transformers model; returns the name."""
    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention_forward)
    AttentionMaskInterface.register(SEGMENT_ATTENTION, _segment_mask)
    return SEGMENT_ATTENTION


def use_for_packing(model) -> None:
    """Switch ``model`` to per-conversation attention (for training only: saved configs do not record it)."""
    model.set_attn_implementation(register())
