"""A KV cache size for vLLM's CPU build when the operator gave none.

Without ``VLLM_CPU_KVCACHE_SPACE`` (or ``--kv-cache-memory-bytes`` /
``--gpu-memory-utilization``) vLLM's CPU worker reserves 90% of the machine's
memory and refuses to start when less than that is free, which on a 24 GiB
machine with anything else running is always. ``yuren-vllm serve`` instead
sizes the cache from what is free: what the weights leave, less a margin for
the process itself, at most vLLM's former default of 4 GiB.
"""

from __future__ import annotations

from pathlib import Path

GIB = 1 << 30
# The server's own memory beside weights and cache: Python, torch, the tokenizer, activations, images in flight.
MARGIN_GIB = 2
MAX_DEFAULT_GIB = 4
ENV = "VLLM_CPU_KVCACHE_SPACE"
# Flags with which the operator sizes the cache (or the reserved share of memory) themselves.
SIZE_FLAGS = ("--kv-cache-memory-bytes", "--gpu-memory-utilization")


class NoRoomForCache(Exception):
    """Too little memory is free for the weights and a KV cache; the message says what to do."""


def sized_by_operator(argv: list[str], environ: dict[str, str]) -> bool:
    """Whether the command line or the environment already sizes vLLM's KV cache."""
    if environ.get(ENV, "") != "":
        return True
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv for flag in SIZE_FLAGS)


def weights_bytes(model: str) -> int:
    """Bytes of the weight files in the checkpoint directory ``model`` (0 if it is not a local directory)."""
    folder = Path(model)
    if not folder.is_dir():
        return 0
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in folder.glob(pattern))


def default_cache_gib(available: int, weights: int) -> int:
    """Whole GiB for the KV cache: free memory less the weights and a margin, at most 4; at least 1 or an error."""
    room = (available - weights) // GIB - MARGIN_GIB
    if room < 1:
        raise NoRoomForCache(
            f"{available / GIB:.1f} GiB of memory is free, the weights take {weights / GIB:.1f} GiB and the server "
            f"needs about {MARGIN_GIB} GiB more, which leaves no room for a KV cache: free memory, or set "
            f"{ENV}=N (GiB) to choose its size yourself"
        )
    return min(room, MAX_DEFAULT_GIB)
