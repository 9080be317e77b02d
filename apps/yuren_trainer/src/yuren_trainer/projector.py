"""The projector's own file: stage 2 writes ``mm_projector.safetensors`` beside its checkpoint, stage 3 can start from it."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .arguments import UsageError

PROJECTOR = "mm_projector"
PROJECTOR_FILE = "mm_projector.safetensors"


def save_projector(output_dir: Path) -> Path:
    """Copy the projector's weights out of the saved checkpoint in ``output_dir`` into ``mm_projector.safetensors``.

    Read back from the checkpoint just written, so it works however the
    weights were distributed while training (ZeRO-3 shards included).
    """
    output_dir = Path(output_dir)
    tensors = {}
    for shard in _checkpoint_shards(output_dir):
        with safe_open(shard, framework="pt") as weights:
            for key in weights.keys():
                if key.startswith(f"{PROJECTOR}."):
                    tensors[key] = weights.get_tensor(key)
    if not tensors:
        raise RuntimeError(f"the checkpoint in {output_dir} holds no {PROJECTOR} weights")
    target = output_dir / PROJECTOR_FILE
    save_file(tensors, target, metadata={"format": "pt"})
    return target


def _checkpoint_shards(output_dir: Path) -> list[Path]:
    index = output_dir / "model.safetensors.index.json"
    if index.is_file():
        return sorted({output_dir / name for name in json.loads(index.read_text())["weight_map"].values()})
    return [output_dir / "model.safetensors"]


def load_projector(model, path: str | Path) -> None:
    """Load projector weights saved by stage 2 (``mm_projector.safetensors``) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--projector_path {path}: no such file (stage 2 writes {PROJECTOR_FILE} into its output)")
    tensors = load_file(path)
    prefix = f"{PROJECTOR}."
    state = {key.removeprefix(prefix): value for key, value in tensors.items()}
    expected = {key: tuple(value.shape) for key, value in model.mm_projector.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    if found != expected:
        raise UsageError(
            f"--projector_path {path} holds {found}, but this model's projector needs {expected}: "
            "was it trained with another stage-1 model or --clip_model?"
        )
    model.mm_projector.load_state_dict(state)
