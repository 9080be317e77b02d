"""Memory: peak resident memory of an 8-bit load against a bf16 load of a ~1B-parameter YuRen checkpoint.

The checkpoint is built here with random weights (LLaMA layout, hidden 2048,
20 layers: about 1.0B parameters, nearly all in the linear layers that 8-bit
loading quantizes) through the project's own tools: ``make_tiny_model``'s base
builder, ``prepare-base-model``, ``build_fused_model``; it is saved in bf16,
as real checkpoints are. Building it takes a couple of minutes and ~10 GB of
disk in ``--workdir``; it is kept there and reused.

Three loads, each in a fresh Python process through ``yuren_core.loading.load_model``:
the bf16 checkpoint with ``dtype=bfloat16``; the same with ``load_8bit=True``
(quantized while loading, the checkpoint read tensor by tensor without a
memory map); and an 8-bit checkpoint written once by ``quantize``, loaded as
``webui`` loads it (``load_model`` finds the saved quantization itself). Each load is
followed by one forward pass (a bf16 load maps the checkpoint file, whose
pages become resident only when read). Each process reports, in GiB:

* ``peak_rss``: the kernel's high-water mark of resident memory (``VmHWM``)
  over the whole process, which the target is about. It counts the pages of
  the memory-mapped checkpoint file the process has read, as well as its own
  allocations;
* ``peak_anon`` / ``peak_file``: the highest anonymous (allocated) and
  file-backed resident memory seen by a sampler thread every 5 ms;
* ``peak_over_baseline``: ``peak_rss`` less what the process held before
  loading (Python, torch and friends: the same for every load, and as large
  as a 1B model's weights, so it flattens whole-process ratios);
* ``rss_after``: resident memory once loaded and run, freed heap handed back;
  ``model_rss_after``: the same less what the process held before loading
  (Python, torch and friends);
* ``footprint``: ``model.get_memory_footprint()``.

The loads alternate, ``--repeats`` times each, and the medians are compared.

    uv run python benchmarks/memory.py            # a few minutes (the first run also builds the model)
    uv run python benchmarks/memory.py --smoke    # a small model, under a minute
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
from common import median, print_table, target, write_record

SIZES = {
    "full": {"hidden_size": 2048, "intermediate_size": 5504, "num_layers": 20, "num_heads": 16},
    "smoke": {"hidden_size": 128, "intermediate_size": 352, "num_layers": 2, "num_heads": 4},
}
# What a load reads and how: a bf16 checkpoint as bf16, the same quantized while loading (``load_8bit``),
# and a checkpoint saved after quantizing, loaded with ``load_8bit``.
LOADS = ("bf16", "8bit", "8bit-saved")


def build_checkpoint(workdir: Path, sizes: dict[str, int]) -> Path:
    """The bf16 YuRen checkpoint of ``sizes`` under ``workdir`` (built once, then reused)."""
    from common import build_prepared_base

    from make_tiny_model.clip import build_tiny_clip
    from yuren_core.loading import build_fused_model

    name = "-".join(f"{key}{value}" for key, value in sizes.items())
    checkpoint = workdir / name / "fused-bf16"
    if (checkpoint / "config.json").is_file():
        return checkpoint
    print(f"building the {name} checkpoint in {checkpoint.parent} (once)", flush=True)
    base = build_prepared_base(checkpoint.parent, **sizes)
    clip = build_tiny_clip(checkpoint.parent / "clip")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, tokenizer, _ = build_fused_model(base, f"local-dir:{clip}", dtype=torch.bfloat16)
    staging = checkpoint.with_name(checkpoint.name + ".partial")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(checkpoint)
    return checkpoint


def save_quantized(checkpoint: Path) -> Path:
    """``checkpoint`` written once as an 8-bit checkpoint beside it, by ``quantize`` (``quantize_model.writing``)."""
    from quantize_model.writing import save_quantized as write_8bit

    quantized = checkpoint.with_name("saved-8bit")
    if not (quantized / "config.json").is_file():
        write_8bit(checkpoint, quantized, bits=8, overwrite=True)
    return quantized


def _status_kib(*fields: str) -> dict[str, int]:
    """Fields of ``/proc/self/status`` (memory sizes, KiB)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            values[name] = int(rest.split()[0])
    if len(values) != len(fields):
        raise RuntimeError(f"/proc/self/status lacks {set(fields) - set(values)} (this benchmark needs Linux)")
    return values


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so resident memory shows what is still in use."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: resident memory may then include freed heap
        pass


def measure(checkpoint: Path, load: str) -> dict[str, float]:
    """Load ``checkpoint``, run one forward pass, and report memory in GiB (meant for a fresh process).

    The forward pass matters: a bf16 load maps the checkpoint file and its
    pages become resident only when first read, which serving does at once.
    """
    from yuren_core.loading import load_model

    peaks = _status_kib("RssAnon", "RssFile")
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            now = _status_kib("RssAnon", "RssFile")
            for name, value in now.items():
                peaks[name] = max(peaks[name], value)

    _release_free_memory()
    before = _status_kib("VmRSS")["VmRSS"]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if load == "8bit":
        model, _, _ = load_model(checkpoint, load_8bit=True)
    elif load == "8bit-saved":
        model, _, _ = load_model(checkpoint)
    else:
        model, _, _ = load_model(checkpoint, dtype=torch.bfloat16)
    with torch.no_grad():
        model(input_ids=torch.arange(16).unsqueeze(0))
    done.set()
    sampler.join()
    _release_free_memory()
    after = _status_kib("VmHWM", "VmRSS", "RssAnon", "RssFile")
    gib = 2**20
    return {
        "peak_rss": after["VmHWM"] / gib,
        "peak_anon": peaks["RssAnon"] / gib,
        "peak_file": peaks["RssFile"] / gib,
        "rss_after": after["VmRSS"] / gib,
        "anon_after": after["RssAnon"] / gib,
        "model_rss_after": (after["VmRSS"] - before) / gib,
        "rss_before_load": before / gib,
        "peak_over_baseline": (after["VmHWM"] - before) / gib,
        "footprint": model.get_memory_footprint() / 2**30,
        "parameters_billion": sum(p.numel() for p in model.parameters()) / 1e9,
    }


def measure_in_fresh_process(checkpoint: Path, load: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--measure", load, "--checkpoint", str(checkpoint)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the {load} load failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where the checkpoint is built and kept (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=2, help="loads of each kind, alternating")
    parser.add_argument("--smoke", action="store_true", help="a small model, one load each: proves the script runs")
    parser.add_argument("--output", type=Path, help="JSON file to write (default benchmarks/results/memory.json)")
    parser.add_argument("--measure", choices=LOADS, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.checkpoint, args.measure)))
        return {}
    if args.smoke:
        args.repeats = 1
    sizes = SIZES["smoke" if args.smoke else "full"]

    with tempfile.TemporaryDirectory(prefix="yuren-memory-") as scratch:
        checkpoint = build_checkpoint(args.workdir or Path(scratch), sizes)
        checkpoints = {"bf16": checkpoint, "8bit": checkpoint, "8bit-saved": save_quantized(checkpoint)}
        runs: dict[str, list[dict[str, float]]] = {load: [] for load in LOADS}
        for _ in range(args.repeats):
            for load in LOADS:
                runs[load].append(measure_in_fresh_process(checkpoints[load], load))

    metrics = ("peak_rss", "peak_over_baseline", "peak_anon", "peak_file", "rss_after", "model_rss_after", "footprint")
    medians = {load: {m: round(median([r[m] for r in runs[load]]), 3) for m in metrics} for load in LOADS}
    ratios = {
        load: {m: round(medians[load][m] / medians["bf16"][m], 3) for m in metrics} for load in LOADS if load != "bf16"
    }
    parameters = runs["bf16"][0]["parameters_billion"]
    print_table(
        f"Memory of loading a {parameters:.2f}B-parameter checkpoint (GiB, median of {args.repeats} fresh processes)",
        ["measure", "bf16", "8-bit", "8-bit saved", "8-bit / bf16", "8-bit saved / bf16"],
        [
            [
                m,
                medians["bf16"][m],
                medians["8bit"][m],
                medians["8bit-saved"][m],
                ratios["8bit"][m],
                ratios["8bit-saved"][m],
            ]
            for m in metrics
        ],
    )
    results = {
        "parameters_billion": round(parameters, 3),
        "median_gib": medians,
        "ratio_to_bf16": ratios,
        "runs": runs,
        "targets": [
            target(
                f"{load}: peak resident memory above the process baseline / bf16's <= 0.6",
                ratios[load]["peak_over_baseline"],
                0.6,
                at_most=True,
            )
            for load in ratios
        ]
        + [
            target(f"{load}: peak resident memory / bf16's <= 0.6", ratios[load]["peak_rss"], 0.6, at_most=True)
            for load in ratios
        ],
    }
    write_record("memory", args.output, {**sizes, "repeats": args.repeats, "smoke": args.smoke}, results)
    return results


if __name__ == "__main__":
    main()
