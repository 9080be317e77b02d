"""Helpers shared by the trainer tests: flags, small conversation sets, in-process runs."""

from __future__ import annotations

import json
from pathlib import Path

from make_tiny_model.pipeline import CPU_FLAGS as PIPELINE_CPU_FLAGS

# The flags every CPU run needs (no GPU precision, no logging service), and no progress bars in test output.
CPU_FLAGS = [*PIPELINE_CPU_FLAGS, "--disable_tqdm", "True"]

# Short question/answer pairs a tiny model can learn by heart in a few dozen steps.
MEMORY_CONVERSATIONS = [
    {
        "conversations": [
            {"from": "human", "value": "What is the secret word for apples?"},
            {"from": "gpt", "value": "The secret word for apples is tangerine sky."},
        ]
    },
    {
        "conversations": [
            {"from": "system", "value": "You are terse."},
            {"from": "human", "value": "Name the capital of Atlantis."},
            {"from": "gpt", "value": "Poseidonia, by the coral gate."},
        ]
    },
    {
        "conversations": [
            {"from": "human", "value": "你好，今天吃什么？"},
            {"from": "gpt", "value": "今天吃番茄炒蛋。"},
        ]
    },
    {
        "conversations": [
            {"from": "human", "value": "Count to five."},
            {"from": "gpt", "value": "One, two, three, four, five."},
        ]
    },
]


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def run_text_sft(*flags: str) -> None:
    """Run the stage-1 recipe in this process, as `python -m yuren_trainer.text_sft FLAGS` would."""
    from yuren_trainer.text_sft import main

    main([*flags, *CPU_FLAGS])


def trainer_state(output_dir: Path) -> dict:
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())
