"""Flag parsing: upstream's transformers-4 spellings, precision checks, wandb preflight."""

from __future__ import annotations

from pathlib import Path

import pytest
from repo_helpers import REPO
from transformers.trainer_utils import IntervalStrategy

from yuren_trainer import arguments
from yuren_trainer.arguments import DataArguments, ModelArguments, SFTTrainingArguments, UsageError, parse_args
from yuren_trainer.stage import check_reporting

DATACLASSES = (ModelArguments, DataArguments, SFTTrainingArguments)


def parse(tmp_path: Path, *flags: str):
    required = ["--model_name_or_path", "base", "--train_file", "train.json", "--output_dir", str(tmp_path)]
    return parse_args(DATACLASSES, [*required, *flags])


def test_upstream_flags_map_to_transformers_5(tmp_path):
    _, data_args, args = parse(
        tmp_path,
        "--evaluation_strategy", "steps", "--eval_steps", "340",
        "--warmup_ratio", "0.03",
        "--group_by_length", "True",
        "--model_max_length", "4096",
        "--bf16", "False", "--tf32", "False",
    )  # fmt: skip
    assert args.eval_strategy == IntervalStrategy.STEPS
    assert args.eval_steps == 340
    assert args.get_warmup_steps(1000) == 30
    assert args.train_sampling_strategy == "group_by_length"
    assert data_args.model_max_length == 4096


def test_upstream_defaults_match_upstream(tmp_path):
    _, data_args, args = parse(tmp_path)
    assert args.report_to == ["wandb"]
    assert args.train_sampling_strategy == "random"
    assert args.remove_unused_columns is False
    assert data_args.packing is False


def test_contradicting_spellings_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(tmp_path, "--evaluation_strategy", "steps", "--eval_strategy", "epoch")
    assert exit_info.value.code == 2
    assert "--evaluation_strategy steps contradicts --eval_strategy epoch" in capsys.readouterr().err


def test_bf16_without_gpu_says_what_to_pass(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(arguments, "is_torch_bf16_gpu_available", lambda: False)
    from yuren_trainer.text_sft import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", "missing", "--train_file", "missing.json", "--output_dir", str(tmp_path),
              "--bf16", "True", "--tf32", "False", "--report_to", "none"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--bf16 True needs a GPU" in err
    assert "--bf16 False --tf32 False" in err
    assert "Traceback" not in err


def test_tf32_without_ampere_gpu_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(arguments, "is_torch_tf32_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        parse(tmp_path, "--bf16", "False", "--tf32", "True")
    assert exit_info.value.code == 2
    assert "--tf32 True needs an NVIDIA Ampere" in capsys.readouterr().err


def test_lora_needs_its_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(tmp_path, "--use_lora", "True")
    assert exit_info.value.code == 2
    assert "--use_lora True needs --lora_config" in capsys.readouterr().err


def test_deepspeed_configs_take_precision_and_batch_from_the_flags(tmp_path):
    for name in ("deepspeed_config.json", "deepspeed_zero2.json"):
        config = REPO / "apps" / "yuren_trainer" / "config" / name
        _, _, args = parse(
            tmp_path, "--deepspeed", str(config), "--bf16", "False", "--tf32", "False",
            "--per_device_train_batch_size", "3", "--gradient_accumulation_steps", "2",
        )  # fmt: skip
        filled = args.hf_deepspeed_config.config
        assert filled["bf16"]["enabled"] is False and filled["fp16"]["enabled"] is False
        assert filled["train_micro_batch_size_per_gpu"] == 3
        assert filled["gradient_accumulation_steps"] == 2


def test_zero3_config_saves_consolidated_16bit_weights():
    import json

    config = json.loads((REPO / "apps" / "yuren_trainer" / "config" / "deepspeed_config.json").read_text())
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"


def test_wandb_without_login_fails_early_with_the_ways_out(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    _, _, args = parse(tmp_path, "--bf16", "False", "--tf32", "False", "--report_to", "wandb")
    with pytest.raises(UsageError, match="WANDB_MODE=offline.*--report_to none"):
        check_reporting(args)
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_reporting(args)


def test_lora_under_zero3_is_refused_before_any_loading(tmp_path):
    from yuren_trainer.models import load_model_to_train

    zero3 = REPO / "apps" / "yuren_trainer" / "config" / "deepspeed_config.json"
    _, _, args = parse(tmp_path, "--deepspeed", str(zero3), "--bf16", "False", "--tf32", "False")
    model_args = ModelArguments(model_name_or_path="nowhere", use_lora=True, lora_config="nowhere.json")
    with pytest.raises(
        UsageError, match="DeepSpeed ZeRO-3 cannot partition; drop --deepspeed .*deepspeed_zero2\\.json"
    ):
        load_model_to_train(model_args, args, tokenizer=None)
    assert args.hf_deepspeed_config.is_zero3()
