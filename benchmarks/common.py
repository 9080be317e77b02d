"""What every benchmark script shares: the machine description, timing, tables, the JSON record, tiny models.

The scripts compare two ways of doing one thing in the same run, on the same
model and data. These machines are shared and noisy, so absolute times mean
little: :func:`interleaved` alternates the contenders repetition by
repetition (a slow spell hits both), and results are reported as medians and
ratios of medians.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from make_tiny_model.sample_data import SAMPLE_CONVERSATIONS
from webui.compute import OPENMP_WAIT_VARIABLES

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
# The project's own sample, shipped as make-tiny-model's package data (a file on disk in this workspace).
PROJECT_DATA = Path(str(SAMPLE_CONVERSATIONS))
# Upstream's 300-conversation sample, beside the checkout where present (never committed).
UPSTREAM_DATA = REPO.parent / "shared" / "data" / "sft.dev.json"


def default_data() -> Path:
    """Upstream's sample when present, else the project's own data."""
    return UPSTREAM_DATA if UPSTREAM_DATA.is_file() else PROJECT_DATA


def machine() -> dict[str, Any]:
    """CPU model, core count, memory, accelerator and library versions of this machine."""
    import transformers

    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    memory_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total_kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory_gib = round(total_kib / 2**20, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # OpenMP's wait settings, as this process started with them (the web UI sets GOMP_SPINCOUNT; see webui.compute).
        "openmp": {name: os.environ[name] for name in OPENMP_WAIT_VARIABLES if name in os.environ},
        "memory_gib": memory_gib,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def interleaved(
    contenders: Mapping[str, Callable[[], Any]], repeats: int, *, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each contender ``repeats`` times, alternating between them (order rotated each round); seconds per run.

    ``warmup`` untimed rounds come first (allocator, caches, lazy imports).
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


# A competing process: single-threaded products of 1024 x 1024 matrices, forever.
BUSY = "import torch; torch.set_num_threads(1); a = torch.randn(1024, 1024)\nwhile True: a @ a"


@contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """Run ``count`` processes that each keep one core busy, for as long as the block runs: a shared machine."""
    processes = []
    try:
        processes = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(count)]
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio_of_medians(slow: Sequence[float], fast: Sequence[float]) -> float:
    """How many times faster ``fast`` is than ``slow`` (median seconds over median seconds)."""
    return median(slow) / median(fast)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a small fixed-width table (floats to 3 significant figures)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def target(name: str, value: float, threshold: float, *, at_most: bool = False) -> dict[str, Any]:
    """A target check for the record: ``value`` against ``threshold`` (``>=``, or ``<=`` with ``at_most``)."""
    met = value <= threshold if at_most else value >= threshold
    return {"target": name, "value": round(value, 4), "threshold": threshold, "met": bool(met)}


def write_record(name: str, output: Path | None, settings: Mapping[str, Any], results: Mapping[str, Any]) -> Path:
    """Write the benchmark's JSON record (machine, command, date, settings, results); return its path.

    ``output`` defaults to ``benchmarks/results/<name>.json``.
    """
    path = Path(output) if output is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *[_relative(a) for a in sys.argv]]),
        "machine": machine(),
        "settings": dict(settings),
        "results": dict(results),
    }
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")
    return path


def _relative(arg: str) -> str:
    try:
        return str(Path(arg).resolve().relative_to(REPO))
    except ValueError:
        return arg


def build_prepared_base(
    out_dir: Path,
    *,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    vocab_size: int = 2000,
    corpus: Path = PROJECT_DATA,
) -> Path:
    """A random LLaMA base of the given size with a tokenizer trained on ``corpus``, after ``prepare-base-model``.

    Goes through the same tools the tests use (``make_tiny_model`` and
    ``prepare_base_model``), so it is a base exactly as training and serving see one.
    """
    from make_tiny_model.llm import build_tiny_base, corpus_lines
    from make_tiny_model.shapes import vocabulary_lines
    from prepare_base_model.prepare import prepare

    raw = build_tiny_base(
        Path(out_dir) / "raw-base",
        corpus_lines([corpus]) + vocabulary_lines(),
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
    )
    return prepare(str(raw), Path(out_dir) / "base")


def build_fused(
    out_dir: Path,
    *,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    image_size: int = 224,
    patch_size: int = 14,
    vision_width: int = 64,
    vision_layers: int = 2,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A saved YuRen checkpoint (random weights): a prepared base of the given size plus a small open_clip ViT.

    The default tower sees 224 x 224 images in 14-pixel patches, so an image is
    256 patch tokens, as with the real ViT-L/14. The weights are saved in ``dtype``.
    """
    from make_tiny_model.clip import build_tiny_clip
    from yuren_core.loading import build_fused_model

    base = build_prepared_base(
        out_dir,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
    )
    clip = build_tiny_clip(
        Path(out_dir) / "clip", image_size=image_size, patch_size=patch_size, width=vision_width, layers=vision_layers
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, tokenizer, _ = build_fused_model(base, f"local-dir:{clip}", dtype=dtype)
    fused = Path(out_dir) / "fused"
    model.save_pretrained(fused)
    tokenizer.save_pretrained(fused)
    return fused
