"""Training throughput: supervised tokens per second of stage-1 training steps, packed against padded.

Same model, same data, same run. The ways batches are made:

* ``packed, per-conversation attn``: stage 1's packing (``yuren_trainer.packing.pack_rows``
  + ``PackedCollator``) with attention computed per conversation
  (``yuren_trainer.segment_attention``, what ``--packing`` uses), the output
  head and loss only at supervised positions (what ``SFTTrainer`` does on
  these batches);
* ``packed, every position projected``: the same, with the output head and
  loss over every token (before ``SFTTrainer`` kept only supervised positions);
* ``packed, dense mask``: the same batches with transformers' ``sdpa``, which
  turns the per-conversation position ids into a dense block-diagonal mask
  over each whole row (what stage 1 does today);
* ``upstream: group_by_length``: upstream's way, one conversation per row,
  ``DataCollatorForSeq2Seq`` padding, transformers' ``LengthGroupedSampler`` order;
* ``padded, random order``: one conversation per row, stage 1's ``PaddingCollator``,
  shuffled.

Conversations are rendered by stage 1's own reader and tokenizer path
(``yuren_trainer.data``). A step is forward, backward and an AdamW update, as
in the Trainer. Every batch of each way's epoch is counted (real and
supervised tokens, the share of computed tokens that are real); a sample of
them, spread evenly over the batch sizes that occur, is timed, the ways'
steps interleaved through the run so a slow spell of this shared machine hits
all of them alike. Throughput is the sample's supervised tokens over its time,
both wall-clock time and the process's CPU time. The ratios that decide the
targets use CPU time: on a shared machine other jobs' bursts stretch the wall
time of whichever step they land on, while the CPU time a step takes is its
own work. Run with ``OMP_WAIT_POLICY=PASSIVE`` so that idle OpenMP threads
sleep rather than spin (spinning would count as CPU time).

    OMP_WAIT_POLICY=PASSIVE uv run python benchmarks/training.py    # ~6 minutes on 2 cores, quiet
    uv run python benchmarks/training.py --smoke    # a tiny model on a few conversations, seconds
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from common import PROJECT_DATA, build_prepared_base, default_data, print_table, target, write_record
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq
from transformers.trainer_pt_utils import get_length_grouped_indices

from yuren_core.constants import IGNORE_INDEX
from yuren_core.records import read_conversations
from yuren_core.vocab import load_tokenizer, special_ids
from yuren_trainer.collator import PackedCollator, PaddingCollator
from yuren_trainer.data import tokenize
from yuren_trainer.packing import pack_rows
from yuren_trainer.segment_attention import register as register_segment_attention
from yuren_trainer.trainer import supervised_positions_only

PACKED = "packed, per-conversation attn (YuRen --packing)"
PACKED_ALL = "packed, every position projected (before)"
PACKED_DENSE = "packed, dense mask (before)"
UPSTREAM = "upstream: group_by_length"
RANDOM = "padded, random order"


@dataclass
class Way:
    """One way of batching: its batches (collated), the attention it runs with, and what was measured."""

    name: str
    attention: str
    batches: list[dict[str, torch.Tensor]]
    real: list[int]
    supervised_only: bool = False  # project and score only supervised positions, as SFTTrainer does
    timed: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)

    def computed(self, index: int) -> int:
        return self.batches[index]["input_ids"].numel()

    def supervised(self, index: int) -> int:
        return int((self.batches[index]["labels"] != IGNORE_INDEX).sum())

    def choose_sample(self, token_budget: int, min_steps: int) -> None:
        """Time about ``token_budget`` computed tokens, at least ``min_steps`` batches (if the epoch has them).

        The batches are spread evenly over the epoch's batches sorted by size.
        """
        order = sorted(range(len(self.batches)), key=self.computed)
        mean = sum(map(self.computed, order)) / len(order)
        count = min(len(order), max(min_steps, round(token_budget / mean)))
        self.timed = [order[int((i + 0.5) * len(order) / count)] for i in range(count)]

    def summary(self) -> dict[str, float]:
        computed = sum(map(self.computed, range(len(self.batches))))
        sample_supervised = sum(map(self.supervised, self.timed))
        sample_computed = sum(map(self.computed, self.timed))
        seconds = sum(self.seconds)
        cpu_seconds = sum(self.cpu_seconds)
        return {
            "batches_per_epoch": len(self.batches),
            "real_share": round(sum(self.real) / computed, 4),
            "supervised_tokens_per_epoch": sum(map(self.supervised, range(len(self.batches)))),
            "timed_batches": len(self.timed),
            "timed_seconds": round(seconds, 2),
            "timed_cpu_seconds": round(cpu_seconds, 2),
            "supervised_tokens_per_s": round(sample_supervised / seconds, 1),
            "supervised_tokens_per_cpu_s": round(sample_supervised / cpu_seconds, 1),
            "computed_tokens_per_cpu_s": round(sample_computed / cpu_seconds, 1),
        }


def batches_of(order: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def make_ways(columns: dict[str, list], tokenizer, batch_size: int, max_length: int, seed: int) -> list[Way]:
    """The four ways of batching one epoch of ``columns`` (tokenized conversations)."""
    pad = special_ids(tokenizer).pad
    rows = [
        {"input_ids": ids, "labels": labels}
        for ids, labels in zip(columns["input_ids"], columns["labels"], strict=True)
    ]
    lengths = columns["length"]

    packed = pack_rows(columns, max_length)
    packed_rows = [
        {"input_ids": ids, "labels": labels, "seq_lengths": seq}
        for ids, labels, seq in zip(packed["input_ids"], packed["labels"], packed["seq_lengths"], strict=True)
    ]
    packed_order = list(range(len(packed_rows)))
    random.Random(seed).shuffle(packed_order)
    packed_batches = batches_of(packed_order, batch_size)
    # --packing flattens each batch into one row (no padding); a dense mask needs the rows kept apart.
    flattened = [PackedCollator(pad, flatten=True)([packed_rows[i] for i in b]) for b in packed_batches]
    collated = [PackedCollator(pad)([packed_rows[i] for i in b]) for b in packed_batches]
    packed_real = [sum(packed["length"][i] for i in b) for b in packed_batches]

    grouped = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed))
    upstream_batches = batches_of(grouped, batch_size)
    upstream_collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)

    shuffled = list(range(len(rows)))
    random.Random(seed).shuffle(shuffled)
    random_batches = batches_of(shuffled, batch_size)
    padding_collator = PaddingCollator(pad)

    def real(batches):
        return [sum(lengths[i] for i in b) for b in batches]

    segment = register_segment_attention()
    return [
        Way(PACKED, segment, flattened, packed_real, supervised_only=True),
        Way(PACKED_ALL, segment, flattened, packed_real),
        Way(PACKED_DENSE, "sdpa", collated, packed_real),
        Way(
            UPSTREAM,
            "sdpa",
            [upstream_collator([rows[i] for i in b]) for b in upstream_batches],
            real(upstream_batches),
        ),
        Way(RANDOM, "sdpa", [padding_collator([rows[i] for i in b]) for b in random_batches], real(random_batches)),
    ]


def make_step(model, optimizer) -> Callable[[Way, int], float]:
    """A training step (forward, backward, AdamW update) on one batch of a way; returns wall and CPU seconds."""

    def step(way: Way, index: int) -> tuple[float, float]:
        model.set_attn_implementation(way.attention)
        batch = way.batches[index]
        start, cpu_start = time.perf_counter(), time.process_time()
        if way.supervised_only:
            batch = supervised_positions_only(batch)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start, time.process_time() - cpu_start

    return step


def profile_step(way: Way, step: Callable[[Way, int], float], top: int = 8) -> dict:
    """Profile one step on the way's median-sized timed batch: the ``top`` ops by own CPU time, ms per 1k supervised tokens."""
    from torch.profiler import ProfilerActivity, profile

    index = sorted(way.timed, key=way.computed)[len(way.timed) // 2]
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step(way, index)
    per_k = 1000 / way.supervised(index)
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_ms = sum(e.self_cpu_time_total for e in events) / 1000
    return {
        "total_ms_per_1k_supervised": round(total_ms * per_k, 2),
        "top_ops_ms_per_1k_supervised": {e.key: round(e.self_cpu_time_total / 1000 * per_k, 2) for e in events[:top]},
    }


def run_interleaved(ways: Sequence[Way], step: Callable[[Way, int], float]) -> None:
    """Time every way's sampled batches, spreading each way's steps evenly through the run."""
    for way in ways:
        step(way, min(range(len(way.batches)), key=way.computed))  # warm-up, untimed
    schedule = [
        ((i + 0.5) / len(way.timed), n, way, index) for n, way in enumerate(ways) for i, index in enumerate(way.timed)
    ]
    for _, _, way, index in sorted(schedule, key=lambda job: job[:2]):
        seconds, cpu_seconds = step(way, index)
        way.seconds.append(seconds)
        way.cpu_seconds.append(cpu_seconds)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with ``--smoke``'s tiny model and data put in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data(), help="ShareGPT conversations (stage-1 data)")
    parser.add_argument("--max-conversations", type=int, help="use only the first N conversations")
    parser.add_argument("--model-max-length", type=int, default=4096)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument(
        "--token-budget",
        type=int,
        default=131072,
        help="computed tokens timed per way and batch size (at least one batch); a smaller sample's "
        "throughput depends on which conversations it happens to hold",
    )
    parser.add_argument("--min-steps", type=int, default=3, help="timed steps per way and batch size, at least")
    parser.add_argument("--profile", action="store_true", help="also profile one step per way (ops by own CPU time)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny model, few conversations: proves the script runs")
    parser.add_argument("--output", type=Path, help="JSON file to write (default benchmarks/results/training.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.data, args.max_conversations, args.model_max_length = PROJECT_DATA, 24, 512
        args.batch_sizes, args.hidden, args.intermediate, args.layers, args.heads = [2, 4], 32, 64, 1, 2
        args.token_budget, args.min_steps = 1024, 1
    return args


def build_model(args: argparse.Namespace):
    """A random model of the asked size in training mode, its tokenizer, and an AdamW optimizer over it."""
    with tempfile.TemporaryDirectory(prefix="yuren-training-") as workdir:
        base = build_prepared_base(
            Path(workdir),
            hidden_size=args.hidden,
            intermediate_size=args.intermediate,
            num_layers=args.layers,
            num_heads=args.heads,
        )
        tokenizer = load_tokenizer(str(base))
        torch.manual_seed(args.seed)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    return model, tokenizer, torch.optim.AdamW(model.parameters(), lr=1e-5)


def measure_batch_size(columns, tokenizer, step, batch_size: int, args: argparse.Namespace) -> dict[str, dict]:
    """Each way's summary at ``batch_size``, the packed ways' speedups (CPU and wall) added; with ``--profile`` its
    profile too, the top ops printed."""
    ways = make_ways(columns, tokenizer, batch_size, args.model_max_length, args.seed)
    for way in ways:
        way.choose_sample(args.token_budget, args.min_steps)
    run_interleaved(ways, step)
    summary = {way.name: way.summary() for way in ways}
    speed = {name: s["supervised_tokens_per_cpu_s"] for name, s in summary.items()}
    wall = {name: s["supervised_tokens_per_s"] for name, s in summary.items()}
    for name in (PACKED, PACKED_ALL, PACKED_DENSE):
        summary[name]["speedup_vs_upstream"] = round(speed[name] / speed[UPSTREAM], 3)
        summary[name]["speedup_vs_random"] = round(speed[name] / speed[RANDOM], 3)
        summary[name]["wall_speedup_vs_upstream"] = round(wall[name] / wall[UPSTREAM], 3)
        summary[name]["wall_speedup_vs_random"] = round(wall[name] / wall[RANDOM], 3)
    if args.profile:
        for way in ways:
            summary[way.name]["profile"] = profile_step(way, step)
            ops = ", ".join(
                f"{k} {v}" for k, v in list(summary[way.name]["profile"]["top_ops_ms_per_1k_supervised"].items())[:5]
            )
            print(f"profile, batch {batch_size}, {way.name}: ms per 1k supervised tokens: {ops}")
    return summary


def print_batch_size(args: argparse.Namespace, batch_size: int, summary: dict[str, dict]) -> None:
    """The table of each way's real share and supervised tokens per CPU second and per second, with ratios."""
    speed = {name: s["supervised_tokens_per_cpu_s"] for name, s in summary.items()}
    wall = {name: s["supervised_tokens_per_s"] for name, s in summary.items()}
    print_table(
        f"Stage-1 training, batch {batch_size}, model_max_length {args.model_max_length}: "
        f"{args.layers} layers x {args.hidden} hidden",
        [
            "way",
            "real share",
            "sup. tok/CPU-s",
            "vs upstream",
            "vs random",
            "sup. tok/s (wall)",
            "vs upstream",
            "vs random",
            "timed batches",
        ],
        [
            [
                name,
                s["real_share"],
                s["supervised_tokens_per_cpu_s"],
                speed[name] / speed[UPSTREAM],
                speed[name] / speed[RANDOM],
                s["supervised_tokens_per_s"],
                wall[name] / wall[UPSTREAM],
                wall[name] / wall[RANDOM],
                s["timed_batches"],
            ]
            for name, s in summary.items()
        ],
    )


def batch_size_targets(batch_size: int, summary: dict[str, dict]) -> list[dict]:
    """The targets at ``batch_size``: the packed ways' speedups (CPU time) and packing's real share."""
    speed = {name: s["supervised_tokens_per_cpu_s"] for name, s in summary.items()}
    wanted = 1.1 if batch_size <= 4 else 1.25
    targets = []
    for name in (PACKED, PACKED_DENSE):
        targets += [
            target(f"batch {batch_size}, {name}: >= {wanted}x upstream", speed[name] / speed[UPSTREAM], wanted),
            target(f"batch {batch_size}, {name}: >= 1.5x random order", speed[name] / speed[RANDOM], 1.5),
        ]
    targets.append(target(f"batch {batch_size}, packed: real share >= 0.95", summary[PACKED]["real_share"], 0.95))
    return targets


def settings_of(args: argparse.Namespace, stats, model) -> dict:
    """The record's settings: the data, the model and the sampling of the timed steps."""
    return {
        "data": str(args.data),
        "conversations": stats.kept,
        "tokens": stats.tokens,
        "supervised_tokens": stats.supervised_tokens,
        "model_max_length": args.model_max_length,
        "model": {
            "hidden": args.hidden,
            "intermediate": args.intermediate,
            "layers": args.layers,
            "heads": args.heads,
            "vocab": model.config.vocab_size,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "token_budget": args.token_budget,
        "min_steps": args.min_steps,
        "profile": args.profile,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "threads": torch.get_num_threads(),
        "smoke": args.smoke,
    }


def main(argv: list[str] | None = None) -> dict:
    """Time every way at each batch size, print the tables, write the record; returns its results."""
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    model, tokenizer, optimizer = build_model(args)
    conversations = list(itertools.islice(read_conversations(args.data), args.max_conversations))
    columns, stats = tokenize(conversations, tokenizer, max_length=args.model_max_length)
    print(stats.describe(str(args.data)), flush=True)

    results: dict = {"batch_sizes": {}}
    targets = []
    step = make_step(model, optimizer)
    for batch_size in args.batch_sizes:
        summary = measure_batch_size(columns, tokenizer, step, batch_size, args)
        results["batch_sizes"][str(batch_size)] = summary
        print_batch_size(args, batch_size, summary)
        targets += batch_size_targets(batch_size, summary)
    results["targets"] = targets
    write_record("training", args.output, settings_of(args, stats, model), results)
    return results


if __name__ == "__main__":
    main()
