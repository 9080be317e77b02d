"""Stage 1 on two nodes: two torchrun launchers meeting at a c10d rendezvous, one process each, gloo on CPU.

The README's multi-node recipe on one machine: the same command on every node,
``--nnodes=2`` and one rendezvous endpoint; node ranks are assigned by the
rendezvous. Each node has its own data cache (as on nodes that share no
filesystem); the output directory is shared.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from repo_helpers import REPO, free_port
from safetensors.torch import load_file
from trainer_helpers import CPU_FLAGS, MEMORY_CONVERSATIONS, trainer_state, write_json

pytestmark = pytest.mark.slow

SHORT, LONG = MEMORY_CONVERSATIONS[3], MEMORY_CONVERSATIONS[1]


def node_command(port: int, *args: str) -> list[str]:
    """What every node runs: the README's recipe with 2 nodes of 1 process."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    rendezvous = ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}"]
    return [torchrun, *rendezvous, "--rdzv_id=yuren-stage1-test", "-m", "yuren_trainer.text_sft", *args]


def test_stage1_on_two_nodes_splits_the_data_and_saves_a_model_that_loads(prepared_base, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from yuren_core.chatml import render

    # Read in order, in batches of 2 handed to the ranks in turn: rank 0 gets [short, short], rank 1 [short, long].
    train_file = write_json(tmp_path / "train.json", [SHORT, SHORT, SHORT, LONG] * 2)
    output = tmp_path / "stage1"
    args = [
        "--model_name_or_path", str(prepared_base), "--train_file", str(train_file), "--output_dir", str(output),
        "--per_device_train_batch_size", "2", "--train_sampling_strategy", "sequential", "--num_train_epochs", "1",
        "--learning_rate", "1e-3", "--logging_steps", "1", "--save_strategy", "no", "--model_max_length", "256",
        *CPU_FLAGS,
    ]  # fmt: skip
    command = node_command(free_port(), *args)
    nodes = []
    for node in range(2):
        cache = tmp_path / f"node{node}"
        # LOGLEVEL=INFO: torchrun's agent logs the rendezvous' result (its node's rank among the nodes).
        env = {**os.environ, "HF_DATASETS_CACHE": str(cache / "datasets"), "LOGLEVEL": "INFO"}
        nodes.append(
            subprocess.Popen(
                [*command, "--data_cache_dir", str(cache / "tokenized")],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [node.communicate(timeout=500)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-4000:] + logs[1][-4000:]

    # The rendezvous made them one job of two nodes, each node's process a rank of its own.
    ranks = sorted((re.findall(r"group_rank=(\d+)", log), re.findall(r"group_world_size=(\d+)", log)) for log in logs)
    assert ranks == [(["0"], ["2"]), (["1"], ["2"])]
    # Each node tokenized into its own cache: nothing needs a filesystem shared beyond the output directory.
    assert all(any((tmp_path / f"node{node}" / "tokenized").iterdir()) for node in range(2))

    # 8 rows in batches of 2 on 2 ranks: 2 steps (4 if each node had trained alone on everything). The padding
    # share is summed over the ranks: rank 0's [short, short] has none, rank 1's [short, long] pads its short row.
    short, long = (len(render(tokenizer, record["conversations"]).input_ids) for record in (SHORT, LONG))
    split = round((long - short) / (2 * short + 2 * long), 4)
    state = trainer_state(output)
    assert state["global_step"] == 2
    assert [e["padding_share"] for e in state["log_history"] if "loss" in e] == [split, split]

    trained = AutoModelForCausalLM.from_pretrained(output).state_dict()
    base = load_file(prepared_base / "model.safetensors")
    assert set(base) <= set(trained)
    assert any(not torch.equal(trained[k], base[k]) for k in base)
