"""vLLM's own environment (installed by serving/install-vllm.sh) and a tiny checkpoint vLLM's CPU kernels take."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parents[2] / "serving"


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The Python of serving/yuren_vllm/.venv, installed (or checked against its lock) by the project's script."""
    subprocess.run(["bash", str(SERVING / "install-vllm.sh")], check=True)
    return SERVING / "yuren_vllm" / ".venv" / "bin" / "python"


@pytest.fixture(scope="session")
def vllm_env() -> dict[str, str]:
    """Environment for vLLM on a small shared CPU: errors in-process, a small KV cache."""
    return {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory) -> Path:
    """A saved tiny YuRen checkpoint with head_dim 32 (vLLM's CPU attention takes no smaller)."""
    import torch

    from make_tiny_model.tiny_model import main as make_tiny
    from prepare_base_model.prepare import prepare
    from yuren_core.loading import build_fused_model

    root = tmp_path_factory.mktemp("vllm_model")
    make_tiny(["--output", str(root / "tiny"), "--num-heads", "2"])
    prepared = prepare(str(root / "tiny" / "base"), root / "prepared")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, tokenizer, _ = build_fused_model(prepared, f"local-dir:{root / 'tiny' / 'clip'}")
        # A random projector's output is small next to the embeddings; scaled up, images decide the answer,
        # so a wrongly placed or missing image shows in the generated ids.
        model.mm_projector.weight.data.mul_(30)
    out = root / "fused"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
