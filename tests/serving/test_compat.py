"""The vLLM internals the plugin uses (yuren_vllm.compat) are where the pinned release has them."""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = pytest.mark.slow

# Run in vLLM's environment: each seam yuren_vllm.compat uses, looked up as it uses it.
PROBE = """
import importlib.metadata, inspect, json
from yuren_vllm import compat
from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig
from vllm.renderers.registry import RENDERER_REGISTRY, RendererRegistry
from vllm.tokenizers import TokenizerRegistry
from vllm.renderers.hf import HfRenderer
from vllm.tokenizers.hf import CachedHfTokenizer

print(json.dumps({
    "release": importlib.metadata.version(compat.CPU_DISTRIBUTION),
    "pinned": compat.VLLM_RELEASE,
    "config_map": type(MODELS_CONFIG_MAP).__name__,
    "hook": list(inspect.signature(VerifyAndUpdateConfig.verify_and_update_model_config).parameters),
    "renderer_registry": isinstance(RENDERER_REGISTRY, RendererRegistry),
    "hf_renderer": RENDERER_REGISTRY.renderers["hf"],
    "hf_tokenizer": TokenizerRegistry.tokenizers["hf"],
    "render_messages": list(inspect.signature(HfRenderer.render_messages).parameters),
    "cpu_build": compat.is_cpu_build(),
}))
"""


def test_vllm_internals_are_where_compat_expects_them(vllm_python):
    result = subprocess.run([str(vllm_python), "-c", PROBE], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    seams = json.loads(result.stdout.strip().splitlines()[-1])
    assert seams == {
        "release": seams["pinned"],
        "pinned": "0.32.0",
        "config_map": "dict",
        "hook": ["model_config"],
        "renderer_registry": True,
        "hf_renderer": ["vllm.renderers.hf", "HfRenderer"],
        "hf_tokenizer": ["vllm.tokenizers.hf", "CachedHfTokenizer"],
        "render_messages": ["self", "messages", "params"],
        "cpu_build": True,
    }
