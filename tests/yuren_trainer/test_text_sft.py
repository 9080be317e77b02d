"""Stage-1 runs in this process on the tiny model: learning, resuming, evaluating, logging."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from repo_helpers import PROJECT_DATA
from safetensors.torch import load_file
from trainer_helpers import (
    MEMORY_CONVERSATIONS,
    mark_history,
    resumed_from_marked,
    run_text_sft,
    trainer_state,
    write_json,
)

from yuren_core.chatml import render
from yuren_trainer.checkpoints import COMPLETE_MARKER


@pytest.mark.slow
def test_overfitting_packed_conversations_reproduces_the_answers(prepared_base, memory_file, tmp_path):
    output = tmp_path / "out"
    run_text_sft(
        "--model_name_or_path", str(prepared_base), "--train_file", str(memory_file),
        "--model_max_length", "128", "--packing", "True",
        "--per_device_train_batch_size", "4", "--max_steps", "40",
        "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--logging_steps", "5",
        "--save_strategy", "no", "--output_dir", str(output), "--data_cache_dir", str(tmp_path / "cache"),
    )  # fmt: skip
    losses = [entry["loss"] for entry in trainer_state(output)["log_history"] if "loss" in entry]
    assert losses[0] > 3 and losses[-1] < 0.2, losses

    from transformers import AutoModelForCausalLM

    from yuren_core.vocab import load_tokenizer

    tokenizer = load_tokenizer(str(output))
    model = AutoModelForCausalLM.from_pretrained(output).eval()
    for record in (MEMORY_CONVERSATIONS[0], MEMORY_CONVERSATIONS[2]):
        prompt, answer = record["conversations"][:-1], record["conversations"][-1]["value"]
        ids = torch.tensor([render(tokenizer, prompt, add_generation_prompt=True).input_ids])
        with torch.no_grad():
            generated = model.generate(ids, max_new_tokens=40, do_sample=False)
        assert tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True) == answer


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_weights(prepared_base, tmp_path):
    conversations = [r for r in json.loads(PROJECT_DATA.read_text()) if "__comment__" not in r]
    train = write_json(tmp_path / "train.json", conversations[:12])
    validation = write_json(tmp_path / "validation.json", conversations[12:16])
    flags = [
        "--model_name_or_path", str(prepared_base), "--train_file", str(train), "--validation_file", str(validation),
        "--model_max_length", "128", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
        "--max_steps", "6", "--learning_rate", "1e-3", "--seed", "7", "--logging_steps", "1",
        "--evaluation_strategy", "steps", "--eval_steps", "3", "--save_strategy", "steps", "--save_steps", "3",
        "--group_by_length", "True", "--warmup_ratio", "0.2", "--data_cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    whole = tmp_path / "whole"
    run_text_sft(*flags, "--output_dir", str(whole))

    history = trainer_state(whole)["log_history"]
    assert [e["step"] for e in history if "eval_loss" in e] == [3, 6]
    assert all(0 <= e["padding_share"] < 1 for e in history if "loss" in e)

    # The run "crashed" after step 3: checkpoint-3 is complete, checkpoint-6 was cut short.
    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoint-3", resumed / "checkpoint-3")
    shutil.copytree(whole / "checkpoint-6", resumed / "checkpoint-6")
    (resumed / "checkpoint-6" / COMPLETE_MARKER).unlink()
    (resumed / "checkpoint-6" / "model.safetensors").write_bytes(b"truncated")
    mark_history(resumed / "checkpoint-3")

    run_text_sft(*flags, "--output_dir", str(resumed))

    resumed_state = trainer_state(resumed)
    assert resumed_state["global_step"] == 6
    assert resumed_from_marked(resumed)
    assert (resumed / "incomplete-checkpoint-6").is_dir()
    expected, got = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    base = load_file(prepared_base / "model.safetensors")
    assert any(not torch.equal(expected[k], base[k]) for k in expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)


def test_bad_data_stops_the_run_before_training(prepared_base, tmp_path, capsys):
    bad = write_json(tmp_path / "bad.json", [{"conversations": [{"from": "robot", "value": "beep"}]}])
    with pytest.raises(SystemExit) as exit_info:
        run_text_sft(
            "--model_name_or_path", str(prepared_base), "--train_file", str(bad),
            "--output_dir", str(tmp_path / "out"), "--data_cache_dir", str(tmp_path / "cache"),
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{bad}:1 (record 0): field 'conversations', turn 0: unknown role 'robot'" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_finished_run_started_again_trains_no_further(prepared_base, tmp_path):
    # 12 conversations in batches of 2 make 6 steps an epoch: the run ends mid-epoch, at checkpoint-4.
    train = write_json(tmp_path / "train.json", MEMORY_CONVERSATIONS * 3)
    output = tmp_path / "out"
    flags = [
        "--model_name_or_path", str(prepared_base), "--train_file", str(train), "--model_max_length", "64",
        "--per_device_train_batch_size", "2", "--max_steps", "4", "--learning_rate", "1e-3",
        "--lr_scheduler_type", "constant", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "2",
        "--output_dir", str(output), "--data_cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    run_text_sft(*flags)
    finished = load_file(output / "model.safetensors")
    # What a crash during the final save leaves: the last checkpoint complete, the model in --output_dir not.
    (output / "model.safetensors").unlink()

    run_text_sft(*flags)

    state = trainer_state(output)
    assert state["global_step"] == 4
    assert max(e["step"] for e in state["log_history"]) == 4
    rerun = load_file(output / "model.safetensors")
    assert rerun.keys() == finished.keys()
    assert all(torch.equal(rerun[k], finished[k]) for k in finished)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--train_file", "{tmp}/nowhere.json"], "{tmp}/nowhere.json: no such file; check the path"),
        (
            ["--train_file", "{train}", "--eval_strategy", "steps"],
            "--eval_strategy steps needs --validation_file (pass one, or drop --eval_strategy",
        ),
    ],
    ids=["missing-train-file", "eval-without-validation"],
)
def test_unusable_flags_end_with_a_message_not_a_traceback(
    prepared_base, memory_file, tmp_path, capsys, flags, expected
):
    def fill(text):
        return text.format(tmp=tmp_path, train=memory_file)

    with pytest.raises(SystemExit) as exit_info:
        run_text_sft(
            "--model_name_or_path", str(prepared_base), *map(fill, flags),
            "--output_dir", str(tmp_path / "out"), "--data_cache_dir", str(tmp_path / "cache"),
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"text_sft: error: {fill(expected)}" in err
    assert "Traceback" not in err and "IntervalStrategy" not in err
