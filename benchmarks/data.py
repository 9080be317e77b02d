"""Data: reading and tokenizing LLaVA-665k-shaped SFT files of growing size; time, cores and peak memory.

Two kinds of synthetic file, each a JSON list (as ``llava_v1_5_mix665k.json``)
of records of about 1 KB with four turns:

* ``stage3``: LLaVA records, an ``image`` path and ``<image>`` first in the
  first human turn; each image is ``--image-seq-len`` patch tokens (576, as
  LLaVA-1.5's 336-pixel ViT-L/14). The paths name a few small PNGs written
  beside the file, so the up-front image check runs too;
* ``stage1``: ShareGPT text records.

The words come from the project's sample conversations (Chinese and English).
Each file is read, checked and tokenized by ``yuren_trainer.data.load_sft_dataset``
into a fresh cache, in a fresh Python process per file, with ``--workers``
tokenizing processes. Reported per file: wall seconds, records/s, CPU seconds of
the process and its workers, records per CPU-second (the per-core rate, which a
busy machine does not skew as it does wall time), and the peak memory of the
whole process tree (the sum of each process's proportional set size, PSS, so
pages the forked workers share with the parent count once; sampled every 50 ms), in all and of anonymous memory
only (``Pss_Anon``: the file-backed rest is mostly the mapped Arrow cache files, which grow with the data but are
page cache the kernel can drop and read back). Per kind: the growth exponent
(slope of log time over log size) and the ratios of the peak memory at the
largest size to that at the smallest.

The tokenizer is the tiny prepared one the tests use (``make_tiny_model``'s
sentencepiece trained on the sample, 2,000 pieces, after ``prepare-base-model``):
its small vocabulary makes about twice as many tokens per character as
Baichuan-7B's, so real tokenizers give more conversations per second.

    uv run python benchmarks/data.py                          # 20k / 80k / 320k records per kind
    uv run python benchmarks/data.py --sizes 20000 80000      # fewer sizes
    uv run python benchmarks/data.py --smoke                  # tiny sizes, proves the script runs
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from common import PROJECT_DATA, build_prepared_base, print_table, target, write_record

KINDS = ("stage3", "stage1")
IMAGE_FILES = 8


def words() -> list[str]:
    """The words of the project's sample conversations."""
    records = json.loads(PROJECT_DATA.read_text(encoding="utf-8"))
    return " ".join(t["value"] for r in records if "conversations" in r for t in r["conversations"]).split()


def synthetic_record(rng: random.Random, vocabulary: list[str], index: int, *, image: bool) -> dict:
    """A record of four turns of about 250 characters; with ``image``, LLaVA's ``image`` field and placeholder."""
    turns = []
    for turn in range(4):
        text = []
        while sum(len(w) + 1 for w in text) < 250:
            text.append(rng.choice(vocabulary))
        value = " ".join(text)
        if turn == 0 and image:
            value = "<image>\n" + value
        turns.append({"from": "human" if turn % 2 == 0 else "gpt", "value": value})
    record = {"id": f"{index:09d}", "conversations": turns}
    if image:
        record["image"] = f"images/{index % IMAGE_FILES}.png"
    return record


def write_data(path: Path, size: int, *, image: bool) -> Path:
    """A JSON list of ``size`` synthetic records, one per line (and the images it names), written as a stream."""
    from PIL import Image

    rng = random.Random(size)
    vocabulary = words()
    if image:
        (path.parent / "images").mkdir(parents=True, exist_ok=True)
        for i in range(IMAGE_FILES):
            Image.new("RGB", (336, 336), (i * 30, 100, 200)).save(path.parent / "images" / f"{i}.png")
    with open(path, "w", encoding="utf-8") as file:
        file.write("[\n")
        for index in range(size):
            separator = ",\n" if index else ""
            file.write(
                separator + json.dumps(synthetic_record(rng, vocabulary, index, image=image), ensure_ascii=False)
            )
        file.write("\n]\n")
    return path


def measure(args) -> None:
    """In this (fresh) process: check the images, then load ``--measure`` through the SFT data cache; print JSON."""
    import os

    from yuren_core.records import read_conversations
    from yuren_core.vocab import load_tokenizer
    from yuren_trainer.data import load_sft_dataset
    from yuren_trainer.images import check_images

    tokenizer = load_tokenizer(args.tokenizer)
    path = Path(args.measure)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    images = 0
    if args.image_seq_len:
        images = check_images(read_conversations(path), path.parent, max_pixels=10**7, workers=args.workers)
    checked = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=path.parent) as cache:
        dataset, stats = load_sft_dataset(
            path,
            tokenizer,
            max_length=args.max_length,
            image_seq_len=args.image_seq_len or None,
            cache_dir=cache,
            num_proc=args.workers,
            packing=args.packing,
        )
        rows = len(dataset)
    seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "image_check_seconds": checked - start,
        "cpu_seconds": _cpu_seconds() - cpu_start,
        "conversations": stats.conversations,
        "rows": rows,
        "tokens": stats.tokens,
        "images_checked": images,
        "pid": os.getpid(),
    }
    print("RESULT " + json.dumps(result))


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the tokenizing workers)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def proportional_memory(pid: int) -> dict[str, int]:
    """A process's PSS in bytes, in all (``pss``) and of anonymous memory only (``anon``: not file-backed pages,
    such as the mapped Arrow files, which the kernel can drop and read again); zeros once it has exited."""
    fields = {"Pss:": "pss", "Pss_Anon:": "anon"}
    memory = dict.fromkeys(fields.values(), 0)
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                name, *value = line.split()
                if name in fields:
                    memory[fields[name]] = int(value[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return memory


def run_one(path: Path, tokenizer: Path, args, *, image_seq_len: int | None) -> dict:
    """Measure one file in a fresh interpreter, sampling the resident memory of its process tree."""
    command = [sys.executable, __file__, "--measure", str(path), "--tokenizer", str(tokenizer)]
    command += ["--workers", str(args.workers), "--max-length", str(args.max_length)]
    command += ["--image-seq-len", str(image_seq_len or 0), *(["--packing"] if args.packing else [])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"pss": 0, "anon": 0}
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            # PSS: the forked workers share the parent's pages (torch and friends); RSS would count them twice.
            totals = [proportional_memory(member.pid) for member in tree]
            for part in peak:
                peak[part] = max(peak[part], sum(t[part] for t in totals))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"measuring {path} failed:\n{err[-4000:]}")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    result["peak_rss_mib"] = peak["pss"] / 2**20
    result["peak_anon_mib"] = peak["anon"] / 2**20
    result["records_per_s"] = result["conversations"] / result["seconds"]
    result["records_per_cpu_s"] = result["conversations"] / result["cpu_seconds"]
    return result


def tokenizer_alone(path: Path, tokenizer: Path) -> float:
    """Conversations per CPU-second of the tokenizer alone on ``path``'s text (best of three), the whole load's ceiling.

    Encodes what rendering encodes, a batch of conversations per call, through
    the same :class:`~yuren_core.chatml.ChatEncoder`: each turn's text and, per
    user turn, the assistant's header. The records are read before timing.
    """
    from yuren_core.chatml import USER, ChatEncoder
    from yuren_core.records import batches, read_conversations
    from yuren_core.vocab import load_tokenizer

    encoder = ChatEncoder(load_tokenizer(str(tokenizer)))
    texts, conversations = [], 0
    for batch in batches(read_conversations(path), 1000):
        # A turn's text, and after a user turn the assistant's header that closes it.
        texts.append([text for c in batch for m in c.messages for text in _turn_texts(m.text, m.role == USER)])
        conversations += len(batch)
    best = 0.0
    for _ in range(3):
        start = time.process_time()
        for batch in texts:
            encoder.encode(batch)
        best = max(best, conversations / (time.process_time() - start))
    return best


def _turn_texts(text: str, user: bool) -> tuple[str, ...]:
    return (text, "assistant\n") if user else (text,)


def growth_exponent(sizes: list[int], seconds: list[float]) -> float:
    """The least-squares slope of log(seconds) over log(size)."""
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (a measuring process's too), with ``--smoke``'s sizes put in."""
    from yuren_trainer.data import default_num_workers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 80_000, 320_000])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--smoke", action="store_true", help="sizes 300 and 600: proves the script runs")
    parser.add_argument("--workers", type=int, default=default_num_workers(), help="tokenizing processes")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--image-seq-len", type=int, default=576)
    parser.add_argument("--packing", action="store_true", help="pack the rows too (--packing True of the stages)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temporary folder)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes = [300, 600]
    return args


def measure_kind(work: Path, tokenizer: Path, kind: str, args: argparse.Namespace) -> dict:
    """Each size's measurement of one kind of file (each printed as it comes), its growth exponent and peak ratio."""
    image = kind == "stage3"
    per_size = {}
    for size in args.sizes:
        folder = work / f"{kind}-{size}"
        folder.mkdir()
        path = write_data(folder / "data.json", size, image=image)
        per_size[size] = run_one(path, tokenizer, args, image_seq_len=args.image_seq_len if image else None)
        per_size[size]["file_mib"] = path.stat().st_size / 2**20
        if size == min(args.sizes):
            per_size[size]["tokenizer_alone_records_per_cpu_s"] = tokenizer_alone(path, tokenizer)
        path.unlink()
        print(f"{kind} {size}: {json.dumps(per_size[size])}", flush=True)
    sizes = sorted(per_size)
    return {
        "sizes": {str(s): per_size[s] for s in sizes},
        "growth_exponent": growth_exponent(sizes, [per_size[s]["seconds"] for s in sizes]),
        "peak_rss_ratio_largest_to_smallest": per_size[sizes[-1]]["peak_rss_mib"] / per_size[sizes[0]]["peak_rss_mib"],
        "peak_anon_ratio_largest_to_smallest": per_size[sizes[-1]]["peak_anon_mib"]
        / per_size[sizes[0]]["peak_anon_mib"],
    }


def print_results(results: dict[str, dict], workers: int) -> None:
    """The table of every kind and size, then each kind's growth exponent and peak ratio."""
    rows = [
        [
            kind,
            f"{int(size):,}",
            round(r["file_mib"], 1),
            round(r["seconds"], 1),
            round(r["records_per_s"]),
            round(r["records_per_cpu_s"]),
            round(r["peak_rss_mib"]),
            round(r["peak_anon_mib"]),
        ]
        for kind, result in results.items()
        for size, r in result["sizes"].items()
    ]
    print_table(
        f"read + check + tokenize, {workers} workers",
        ["kind", "records", "MiB", "seconds", "records/s", "records/CPU-s", "peak PSS MiB", "of it anonymous"],
        rows,
    )
    for kind, result in results.items():
        smallest = result["sizes"][min(result["sizes"], key=int)]
        alone = smallest["tokenizer_alone_records_per_cpu_s"]
        print(
            f"{kind}: growth exponent {result['growth_exponent']:.3f}, "
            f"peak PSS ratio {result['peak_rss_ratio_largest_to_smallest']:.2f}, "
            f"peak anonymous PSS ratio {result['peak_anon_ratio_largest_to_smallest']:.2f}; "
            f"tokenizer alone {alone:.0f} records/CPU-s, the whole load at {smallest['records_per_cpu_s'] / alone:.0%} of it"
        )


def targets_of(results: dict[str, dict]) -> list[dict]:
    """Each kind's growth exponent and peak ratio targets; stage1's slowest conversations per CPU-second."""
    targets = []
    for kind, result in results.items():
        targets.append(target(f"{kind} growth exponent", result["growth_exponent"], 1.1, at_most=True))
        targets.append(
            target(f"{kind} peak RSS largest/smallest", result["peak_rss_ratio_largest_to_smallest"], 1.5, at_most=True)
        )
        targets.append(
            target(
                f"{kind} peak anonymous memory largest/smallest",
                result["peak_anon_ratio_largest_to_smallest"],
                1.5,
                at_most=True,
            )
        )
    if "stage1" in results:
        slowest = min(r["records_per_cpu_s"] for r in results["stage1"]["sizes"].values())
        targets.append(target("stage1 conversations per CPU-second", slowest, 2000))
    return targets


def main(argv: list[str] | None = None) -> None:
    """Measure every kind at every size, print the table, write the record (or, with ``--measure``, measure one file)."""
    args = parse_args(argv)
    if args.measure:
        measure(args)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        work = Path(work)
        tokenizer = build_prepared_base(work / "model", hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
        results = {kind: measure_kind(work, tokenizer, kind, args) for kind in args.kinds}
    print_results(results, args.workers)
    settings = {
        "sizes": args.sizes,
        "workers": args.workers,
        "max_length": args.max_length,
        "image_seq_len": args.image_seq_len,
        "packing": args.packing,
        "tokenizer": "tiny prepared sentencepiece (make_tiny_model + prepare-base-model), 2,000 pieces",
        "smoke": args.smoke,
        "load_average": list(psutil.getloadavg()),
    }
    write_record("data", args.output, settings, {**results, "targets": targets_of(results)})


if __name__ == "__main__":
    main()
