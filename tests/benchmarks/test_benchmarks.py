"""The benchmark scripts run (tiny ``--smoke`` sizes) and measure what they claim to."""

from __future__ import annotations

import math
import os

import pytest
import torch

from webui.compute import OPENMP_WAIT_VARIABLES, short_spin_environment


def test_splice_benchmark_checks_identical_outputs(run_benchmark):
    record = run_benchmark("splice", "--smoke")
    results = record["results"]
    assert results["identical_outputs_and_gradients"] is True
    assert set(results["forward"]["speedup"]) == {
        "per-sample loop (upstream)", "index_copy (YuRen)", "masked_scatter (YuRen before)",
    }  # fmt: skip
    assert record["machine"]["torch"] == torch.__version__ and record["command"].startswith("python benchmarks/")


@pytest.mark.slow
def test_gpu_script_smoke_runs_every_section(run_benchmark):
    record = run_benchmark("gpu", "--smoke")
    assert {name: s["ok"] for name, s in record["sections"].items()} == {"decode": True, "training": True, "int8": True}
    decode = record["decode"]
    assert decode["eager"]["new_tokens"] == decode["static_compiled"]["new_tokens"] == 8
    assert decode["decoder_eager"]["new_tokens"] == 8  # the web UI's path
    assert decode["decoder_tokens_match_generate"] is True
    ways = record["training"]["ways"]
    real = {way["real_tokens"] for way in ways.values()}
    assert len(real) == 1, "packed and padded steps must train on the same conversations"
    padded = ways["padded, one conversation per row"]
    assert padded["computed_tokens"] > padded["real_tokens"]
    assert record["int8"]["decode"]["new_tokens"] == 4


@pytest.mark.slow
def test_training_benchmark_smoke(run_benchmark):
    record = run_benchmark("training", "--smoke")
    for ways in record["results"]["batch_sizes"].values():
        supervised = {way["supervised_tokens_per_epoch"] for way in ways.values()}
        assert len(supervised) == 1, "every way must train on the same supervised tokens"
        packed = ways["packed, per-conversation attn (YuRen --packing)"]
        assert packed["real_share"] > ways["padded, random order"]["real_share"]
        assert all(way["supervised_tokens_per_s"] > 0 for way in ways.values())


@pytest.mark.slow
def test_generation_benchmark_smoke(run_benchmark):
    record = run_benchmark("generation", "--smoke", "--load", "1")
    results = record["results"]
    assert record["settings"]["load_processes"] == 1
    # Both ways run with OpenMP set as the web UI sets it (or as the user chose).
    chosen = {name: os.environ[name] for name in OPENMP_WAIT_VARIABLES if name in os.environ}
    assert record["machine"]["openmp"] == (chosen or short_spin_environment(os.environ))
    assert results["greedy_outputs_identical"] is True
    assert results["prompt_tokens"] > 256  # one image of 256 patch tokens plus the text
    # In fp32: one layer of hidden 32 (q/k/v/o 4 x 32 x 32, gate/up/down 3 x 64 x 32, two norms), the final norm, and
    # the head (its weight and the bias that suppresses the end of turn); not the embeddings or the vision tower.
    vocab = record["settings"]["vocab_size"]
    assert results["weight_bytes_per_token"] == 4 * (4 * 32 * 32 + 3 * 64 * 32 + 3 * 32 + vocab * 32 + vocab)
    assert results["bandwidth_gb_per_s"] > 0 and results["decode_share_of_ceiling"]
    assert all(way["tokens_per_s"] > 0 for way in results["ways"].values())
    for name in ("upstream loop", "web UI (ModelBackend.stream)"):
        way = results["ways"][name]
        assert 0 < way["first_piece_ttft_cpu_ms"] <= way["first_piece_ttft_ms"] * 1.01
    for profile in results["profiles"].values():
        assert profile["ms_per_token_in_decoder_layers"] > 0 and profile["top_python_outside_model_ms_per_token"]


@pytest.mark.slow
def test_as_served_benchmark_smoke(run_benchmark):
    record = run_benchmark("as_served", "--smoke", "--load", "1", "--threads", "1")
    results = record["results"]
    assert results["greedy_outputs_identical"] is True
    assert set(results["ways"]) == {"upstream web UI", "web UI"}
    assert all(way["tokens_per_s"] > 0 and way["ttft_ms"] > 0 for way in results["ways"].values())
    assert record["settings"]["load_processes"] == 1 and record["settings"]["threads"] == 1


@pytest.mark.slow
def test_memory_benchmark_smoke(run_benchmark):
    results = run_benchmark("memory", "--smoke")["results"]
    footprint = {load: runs[0]["footprint"] for load, runs in results["runs"].items()}
    assert footprint["8bit"] < footprint["bf16"] and footprint["8bit-saved"] == footprint["8bit"]
    assert all(runs[0]["peak_rss"] >= runs[0]["rss_before_load"] > 0 for runs in results["runs"].values())


@pytest.mark.slow
def test_data_benchmark_smoke(run_benchmark):
    record = run_benchmark("data", "--smoke", "--workers", "2")
    results = record["results"]
    for kind, records_per_file in (("stage3", [300, 600]), ("stage1", [300, 600])):
        sizes = results[kind]["sizes"]
        assert [sizes[str(n)]["conversations"] for n in records_per_file] == records_per_file
        assert all(s["rows"] == s["conversations"] and s["peak_rss_mib"] > 0 for s in sizes.values())
        # Anonymous memory is part of the whole, and most of it: torch and friends, loaded before any data.
        assert all(0.5 * s["peak_rss_mib"] < s["peak_anon_mib"] <= s["peak_rss_mib"] for s in sizes.values())
        # Two sizes: the fitted slope is the one through both points. (Its sign is noise at these sizes, where
        # the workers' start dominates.)
        small, large = (sizes[str(n)]["seconds"] for n in records_per_file)
        assert results[kind]["growth_exponent"] == pytest.approx(math.log(large / small) / math.log(2), rel=1e-9)
    assert all(s["images_checked"] == 8 for s in results["stage3"]["sizes"].values())
    assert all(s["images_checked"] == 0 for s in results["stage1"]["sizes"].values())
    # An image record is the same text plus a 578-token image block (the text, cut around the block, may encode
    # a token or two differently).
    extra = results["stage3"]["sizes"]["300"]["tokens"] - results["stage1"]["sizes"]["300"]["tokens"]
    assert abs(extra - 300 * 578) <= 300 * 2
