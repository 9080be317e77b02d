"""Helpers shared by the trainer tests: flags, small conversation sets, in-process runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from make_demo_model.pipeline import CPU_FLAGS as PIPELINE_CPU_FLAGS

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


def mark_history(checkpoint: Path) -> None:
    """Tag the first entry of the history kept in ``checkpoint``: a run resumed from it carries the tag on."""
    state_file = Path(checkpoint) / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"][0]["resumed_from_here"] = True
    state_file.write_text(json.dumps(state))


def resumed_from_marked(output_dir: Path) -> bool:
    """Whether the run in ``output_dir`` took up the history of a checkpoint :func:`mark_history` tagged."""
    return trainer_state(output_dir)["log_history"][0].get("resumed_from_here") is True


def step_logs(output_dir: Path) -> list[tuple]:
    """Per logged training step of the run in ``output_dir``: (step, loss, grad_norm, learning_rate)."""
    return [
        (e["step"], e["loss"], e["grad_norm"], e["learning_rate"])
        for e in trainer_state(output_dir)["log_history"]
        if "loss" in e
    ]


# Distinct pictures, so a batch whose images land on the wrong conversation computes a different loss.
COLOURS = {"red.png": (220, 20, 20), "green.png": (20, 200, 40), "noise.png": None}


def write_images(folder):
    folder.mkdir()
    for name, colour in COLOURS.items():
        image = (
            Image.effect_noise((48, 40), 80).convert("RGB") if colour is None else Image.new("RGB", (40, 30), colour)
        )
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        (folder / name).write_bytes(buffer.getvalue())


def llava_records():
    """LLaVA-style records: ``<image>`` first (LLaVA-Instruct), last (the 558k captions), two images, and none."""

    def turns(*pairs):
        return [{"from": who, "value": text} for who, text in pairs]

    return [
        {
            "image": "red.png",
            "conversations": turns(("human", "<image>\nWhat colour is it?"), ("gpt", "Red, all over.")),
        },
        {"image": "noise.png", "conversations": turns(("human", "Describe this.\n<image>"), ("gpt", "Grey static."))},
        {
            "images": ["green.png", "red.png"],
            "conversations": turns(
                ("human", "<image>\n<image>\nHow do they differ?"),
                ("gpt", "The first is green, the second red."),
                ("human", "Which is brighter?"),
                ("gpt", "The red one."),
            ),
        },
        {"conversations": turns(("human", "Say hello."), ("gpt", "Hello there!"))},
    ]
