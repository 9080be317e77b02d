"""Generation as served: each web UI's answer loop driven the way Gradio drives it, each in its own process.

Gradio iterates a streaming handler from its worker threads (anyio's), one
``next()`` at a time, in a process whose main thread loaded the model. torch's
CPU kernels use OpenMP, which gives each thread that starts parallel work its
own team of helpers; with more than one team alive, GNU OpenMP stops its idle
helpers from spinning and every parallel op waits for them to wake (see
``webui.compute``). ``generation.py`` times the decode paths in one process
with one team; this script times them as their web UIs run them:

* ``upstream web UI``: the model loaded in the main thread, upstream's loop
  (``generation.upstream_stream``) iterated from anyio worker threads;
* ``web UI``: ``ModelBackend.from_pretrained`` (which loads on the backend's
  compute thread) and ``ModelBackend.stream`` iterated from anyio worker
  threads, the decoding on the compute thread, in a process whose OpenMP
  starts with the ``webui`` command's short spin
  (``webui.compute.short_spin_environment``; a ``GOMP_SPINCOUNT`` or
  ``OMP_WAIT_POLICY`` of your own applies to both ways instead).

Each way runs in a worker process of its own, started once; runs alternate
between them. Same prompt and settings as ``generation.py`` (one image, 256
new tokens, end of turn suppressed); both must give the same greedy text.
``--load N`` runs N busy processes (single-threaded matrix products) beside
the timed runs: a machine shared with other work. ``--threads N`` gives both
ways N CPU threads (the web UI's ``--threads``; ``torch.set_num_threads`` for
upstream's) instead of torch's default of one per core.

    uv run python benchmarks/as_served.py             # ~2 minutes on 2 cores
    uv run python benchmarks/as_served.py --load 1    # with one competing process
    uv run python benchmarks/as_served.py --load 1 --threads 1
    uv run python benchmarks/as_served.py --smoke     # tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from common import build_fused, busy_processes, median, print_table, target, write_record

from webui.compute import short_spin_environment

UPSTREAM, WEB_UI = "upstream web UI", "web UI"
WORKER_FLAGS = {UPSTREAM: "upstream", WEB_UI: "webui"}


def worker(way: str, checkpoint: Path, new_tokens: int, threads: int | None) -> None:
    """Serve ``run`` / ``greedy`` commands (one per stdin line) with one JSON line each, from an anyio event loop."""
    import anyio
    import torch
    import transformers
    from generation import QUESTION, AnswerClock, suppress_end_of_turn, upstream_stream
    from PIL import Image

    from webui.backend import GenerationParams
    from webui.engine import ModelBackend
    from yuren_core.chatml import user_content
    from yuren_core.loading import load_model

    transformers.logging.set_verbosity_error()
    picture = Image.new("RGB", (640, 480), (200, 120, 40))
    if way == "upstream":
        if threads is not None:
            torch.set_num_threads(threads)
        model, tokenizer, image_processor = load_model(checkpoint)
        # Used only to render prompts (no tensor work), so its compute thread stays idle.
        backend = ModelBackend(model, tokenizer, image_processor)
        suppress_end_of_turn(model, backend.eos_token_id)
        image = image_processor.preprocess(picture)
    else:
        backend = ModelBackend.from_pretrained(checkpoint, threads=threads)
        backend.compute.call(suppress_end_of_turn, backend.model, backend.eos_token_id)
        image = backend.prepare_image(picture)
    messages = [{"role": "user", "content": user_content(QUESTION, 1, backend.image_position)}]

    def pieces(params):
        if way == "webui":
            return backend.stream(messages, [image], params, threading.Event())
        prompt = backend.build_prompt(messages, [image], params.max_new_tokens)

        @torch.inference_mode()
        def loop():
            yield from upstream_stream(
                backend.model,
                backend.tokenizer,
                prompt.input_ids,
                torch.stack(prompt.images),
                params,
                backend.eos_token_id,
            )

        return loop()

    async def drain(params) -> dict:
        clock = AnswerClock(cumulative=way == "upstream")
        stream = pieces(params)
        end = object()
        while (piece := await anyio.to_thread.run_sync(next, stream, end)) is not end:
            clock.add(piece)
        return clock.result()

    async def serve() -> None:
        commands = {
            "greedy": GenerationParams(max_new_tokens=new_tokens, temperature=0.0),
            "run": GenerationParams(max_new_tokens=new_tokens),
        }
        print("ready", flush=True)
        while command := (await anyio.to_thread.run_sync(sys.stdin.readline)).strip():
            print(json.dumps(await drain(commands[command]), ensure_ascii=False), flush=True)

    anyio.run(serve)


class Worker:
    """A worker process for one way, driven over its stdin / stdout."""

    def __init__(self, way: str, checkpoint: Path, new_tokens: int, threads: int | None):
        command = [sys.executable, __file__, "--worker", WORKER_FLAGS[way], "--checkpoint", str(checkpoint)]
        if threads is not None:
            command += ["--threads", str(threads)]
        # The web UI's process starts OpenMP with a short spin (webui.compute says why); upstream's with the default.
        env = {**os.environ, **(short_spin_environment(os.environ) if way == WEB_UI else {})}
        self.process = subprocess.Popen(
            [*command, "--new-tokens", str(new_tokens)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {way} worker failed to start (its messages are above)")

    def __call__(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a worker died during `{command}` (its messages are above)")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (a worker's too), with ``--smoke``'s counts put in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9, help="timed answers per way")
    parser.add_argument("--load", type=int, default=0, help="busy processes running beside the timed answers")
    parser.add_argument("--threads", type=int, help="CPU threads for each way (default: torch's, one per core)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 16 tokens: proves the script runs")
    parser.add_argument("--output", type=Path, help="JSON file to write (default benchmarks/results/as_served.json)")
    parser.add_argument("--worker", choices=sorted(WORKER_FLAGS.values()), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.new_tokens, args.repeats = 16, 2
    return args


def model_size(smoke: bool) -> dict[str, int]:
    """``build_fused``'s size arguments: the model ``generation.py`` times, or a tiny one."""
    if smoke:
        return {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2}
    return {"hidden_size": 512, "intermediate_size": 1376, "num_layers": 4, "num_heads": 8}


def time_ways(checkpoint: Path, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Each way's timed answers from its own worker process, after both gave the same greedy text and warmed up.

    Runs alternate between the workers, each round starting with the other.
    """
    workers = {way: Worker(way, checkpoint, args.new_tokens, args.threads) for way in WORKER_FLAGS}
    try:
        texts = {way: run("greedy")["text"] for way, run in workers.items()}
        if len(set(texts.values())) != 1:
            raise AssertionError(f"greedy answers differ between the ways: {texts}")
        for run in workers.values():
            run("run")  # warm-up
        runs: dict[str, list[dict]] = {way: [] for way in workers}
        with busy_processes(args.load):
            for round_index in range(args.repeats):
                order = list(workers)[round_index % 2 :] + list(workers)[: round_index % 2]
                for way in order:
                    runs[way].append(workers[way]("run"))
        return runs
    finally:
        for run in workers.values():
            run.close()


def summarize(runs: dict[str, list[dict]], new_tokens: int) -> dict[str, dict[str, float]]:
    """Each way's median TTFT (ms) and tokens/s."""
    return {
        way: {
            "ttft_ms": round(median([r["ttft"] for r in results]) * 1e3, 3),
            "tokens_per_s": round(median([new_tokens / r["total"] for r in results]), 3),
        }
        for way, results in runs.items()
    }


def print_summary(args: argparse.Namespace, summary: dict[str, dict[str, float]]) -> None:
    """The table of each way's TTFT and tokens/s, against upstream's."""
    print_table(
        f"As served (anyio worker threads drive each answer), {args.new_tokens} new tokens, "
        f"{args.threads or 'default'} threads, {args.load} busy processes beside; median of {args.repeats}",
        ["way", "TTFT ms", "tok/s", "speedup (tok/s)"],
        [
            [way, s["ttft_ms"], s["tokens_per_s"], s["tokens_per_s"] / summary[UPSTREAM]["tokens_per_s"]]
            for way, s in summary.items()
        ],
    )


def main(argv: list[str] | None = None) -> dict:
    """Time both ways as served, print the table, write the record; returns its results (a worker returns ``{}``)."""
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.checkpoint, args.new_tokens, args.threads)
        return {}
    size = model_size(args.smoke)
    with tempfile.TemporaryDirectory(prefix="yuren-as-served-") as workdir:
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        # Saved in bf16 as upstream's released checkpoint; each way loads it in fp32 on a CPU (load_model's default).
        checkpoint = build_fused(Path(workdir), **size, dtype=torch.bfloat16)
        runs = time_ways(checkpoint, args)

    summary = summarize(runs, args.new_tokens)
    speedup = summary[WEB_UI]["tokens_per_s"] / summary[UPSTREAM]["tokens_per_s"]
    ttft_ratio = summary[UPSTREAM]["ttft_ms"] / summary[WEB_UI]["ttft_ms"]
    print_summary(args, summary)
    results = {
        "new_tokens": args.new_tokens,
        "ways": summary,
        "speedup_tokens_per_s": round(speedup, 3),
        "ttft_ratio_upstream_over_web_ui": round(ttft_ratio, 3),
        "greedy_outputs_identical": True,
        "targets": [
            target("web UI tokens/s >= 1.2x upstream's web UI, as served", speedup, 1.2),
            target("web UI TTFT no worse than upstream's, as served (upstream / web UI >= 1)", ttft_ratio, 1.0),
        ],
    }
    settings = {**size, "repeats": args.repeats, "load_processes": args.load, "threads": args.threads}
    settings["smoke"] = args.smoke
    write_record("as_served", args.output, settings, results)
    return results


if __name__ == "__main__":
    main()
