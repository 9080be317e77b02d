"""The built-in demo model (placeholder: an untrained tiny fused model).

PLACEHOLDER until the real demo builder lands (it trains the tiny model through
stages 1-3 on the project's data): this one only assembles an untrained tiny
model, with the same signature and caching, so the UI can be served with no
MODEL argument.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def ensure_demo_model(cache_dir: Path) -> Path:
    """Return the demo checkpoint under ``cache_dir``, building it on first use."""
    from make_tiny_model.__main__ import main as make_tiny_model
    from prepare_base_model.__main__ import prepare
    from yuren_core.loading import build_fused_model

    target = Path(cache_dir) / "model"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".demo-build-") as work:
        work = Path(work)
        make_tiny_model(["--output", str(work / "tiny")])
        prepare(str(work / "tiny" / "base"), work / "prepared")
        model, tokenizer, _ = build_fused_model(work / "prepared", f"local-dir:{work / 'tiny' / 'clip'}")
        staging = work / "model"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target
