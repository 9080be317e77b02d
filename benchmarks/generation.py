"""Generation: the web UI's streaming path against upstream's sampling loop, on one small YuRen model.

* ``web UI``: ``webui.engine.ModelBackend.stream``: the prompt rendered by
  ``yuren_core.chatml``, decoded by ``yuren_core.decoding.Decoder`` (the
  model's forward for the prompt, keeping the last position's logits only,
  then its decoder stack and head per new token on a ``DynamicCache``;
  ``Sampler``), streamed by
  ``TextDeltas``, on the backend's compute thread, the pieces handed to the
  caller's thread as they come: what a browser receives;
  with ``--compile`` also the same path on a static cache with ``torch.compile``;
* ``web UI before``: what ``ModelBackend.stream`` did until the decoder
  replaced it: ``model.generate`` in a worker thread feeding a
  ``TextIteratorStreamer``;
* ``upstream loop``: upstream's way (FastChat's ``generate_stream``, as
  upstream's web UI used it): a Python loop of single-token forwards on the
  KV cache, repetition penalty / temperature / top-p applied by hand, and the
  *whole* answer re-decoded every 2 tokens to stream it.

The checkpoint is built and loaded, and upstream's loop runs, on the web
UI's compute thread (``webui.compute.ComputeThread``): the process has one
team of OpenMP threads, as the web UI has, and upstream's loop is timed
where it runs, with no hand-over of its pieces. OpenMP starts with the
``webui`` command's short spin (``webui.compute.short_spin_environment``),
for both ways.

Both answer the same ~300-token prompt (one image of 256 patch tokens and a
question) with 256 new tokens, sampling with the web UI's default settings.
The model is random, so its end-of-turn tokens are given a large negative
output bias: every answer runs the full 256 tokens. Before timing, both ways
decode greedily and must produce the same text. ``--load N`` runs N busy
processes (``common.busy_processes``) beside the timed runs: a shared machine.

Reported per way (median of ``--repeats`` interleaved runs): time to first
token (first text the caller receives) and tokens per second over the whole
answer. Since a whole answer yields one TTFT sample, the TTFT target is
decided on ``--ttft-repeats`` further interleaved runs that close each stream
at its first piece (wall time, and the CPU time of the compute thread, which
does every way's work and which other jobs on a shared machine do not stretch). A cProfile of each way splits the time per token into the model's
decoder layers (``LlamaDecoderLayer.forward``: the same arithmetic in every way) and
everything around them (the stack's per-call work, sampling, streaming, bookkeeping).

    uv run python benchmarks/generation.py            # ~3 minutes on 2 cores, quiet
    uv run python benchmarks/generation.py --load 1   # with one competing process (a shared machine)
    uv run python benchmarks/generation.py --compile  # plus the compiled static-cache path
    uv run python benchmarks/generation.py --smoke    # tiny model, 16 tokens, seconds
    uv run python benchmarks/generation.py --hidden 2048 --intermediate 5504 --layers 20 --heads 16 \
        --new-tokens 64 --repeats 3 --ttft-repeats 3       # a 1.0B-parameter model: memory bandwidth bound

Before the timed runs it measures the memory bandwidth (the best of repeated
sums of a 1 GiB tensor) and reports each way's tokens/s against the ceiling
that sets: the bytes of weights a decode step reads (decoder layers, final
norm, head), once per token, at that bandwidth.
"""

from __future__ import annotations

import os

from webui.compute import short_spin_environment

# Before torch loads OpenMP, which reads its settings once: both ways run with the web UI's short spin.
os.environ.update(short_spin_environment(os.environ))

import argparse
import cProfile
import inspect
import pstats
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import transformers
from common import build_fused, busy_processes, interleaved, median, print_table, ratio_of_medians, target, write_record
from PIL import Image
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopPLogitsWarper,
)
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from webui.backend import GenerationParams
from webui.compute import ComputeThread
from webui.engine import ModelBackend
from yuren_core.chatml import user_content
from yuren_core.loading import load_model

QUESTION = "请仔细观察这张图片, 描述画面中的主要物体、它们的颜色和位置, 并说明这张图片可能是在什么场合拍摄的。"
STREAM_INTERVAL = 2


def upstream_stream(model, tokenizer, input_ids: list[int], pixel_values, params: GenerationParams, stop_ids):
    """Upstream's loop: one forward per token on the KV cache, sampling by hand, re-decoding every 2 tokens."""
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(params.repetition_penalty)])
    if not params.greedy:
        processors += [TemperatureLogitsWarper(params.temperature), TopPLogitsWarper(params.top_p)]
    output_ids = list(input_ids)
    cache = None
    token = None
    for step in range(params.max_new_tokens):
        if step == 0:
            out = model(input_ids=torch.tensor([input_ids]), pixel_values=pixel_values, use_cache=True)
        else:
            out = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True)
        cache = out.cache
        logits = processors(torch.tensor([output_ids]), out.logits[:, -1, :])[0]
        if params.greedy:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(logits, dim=-1), 1))
        output_ids.append(token)
        stopped = token in stop_ids
        if step % STREAM_INTERVAL == 0 or stopped or step == params.max_new_tokens - 1:
            yield tokenizer.decode(output_ids[len(input_ids) :], skip_special_tokens=True)
        if stopped:
            return


def suppress_end_of_turn(model, token_ids: list[int]) -> None:
    """Give the head a bias of -1e4 on ``token_ids``, so a random model's answers run to ``max_new_tokens``."""
    head = model.get_output_embeddings()
    bias = torch.zeros(head.out_features, dtype=head.weight.dtype)
    bias[token_ids] = -1e4
    head.bias = torch.nn.Parameter(bias, requires_grad=False)


class AnswerClock:
    """Times one streamed answer from its creation: seconds to its first non-empty piece and to its end, and its text.

    A ``cumulative`` stream yields the whole answer so far each time (upstream's); otherwise new text only.
    """

    def __init__(self, *, cumulative: bool):
        self.cumulative = cumulative
        self.start = time.perf_counter()
        self.first: float | None = None
        self.text = ""

    def add(self, piece: str) -> None:
        if self.first is None and piece:
            self.first = time.perf_counter() - self.start
        self.text = piece if self.cumulative else self.text + piece

    def result(self) -> dict[str, float | str]:
        """``ttft`` (NaN for an answer with no text), ``total`` seconds, and ``text``."""
        ttft = self.first if self.first is not None else float("nan")
        return {"ttft": ttft, "total": time.perf_counter() - self.start, "text": self.text}


def consume(pieces: Iterator[str], *, cumulative: bool) -> dict[str, float | str]:
    """Drain a stream, timed by :class:`AnswerClock`."""
    clock = AnswerClock(cumulative=cumulative)
    for piece in pieces:
        clock.add(piece)
    return clock.result()


def first_piece(pieces: Iterator[str], cpu_clock: int) -> dict[str, float]:
    """Seconds (wall, and CPU on ``cpu_clock``) to the first non-empty piece of a stream, which is then closed."""
    start, cpu_start = time.perf_counter(), time.clock_gettime(cpu_clock)
    try:
        next(piece for piece in pieces if piece)
        return {"ttft": time.perf_counter() - start, "ttft_cpu": time.clock_gettime(cpu_clock) - cpu_start}
    finally:
        pieces.close()


def generate_before(
    backend: ModelBackend, input_ids: list[int], pixel_values, params: GenerationParams
) -> Iterator[str]:
    """The web UI's previous path: ``model.generate`` in a worker thread feeding a ``TextIteratorStreamer``."""
    model = backend.model
    kwargs = {"max_new_tokens": params.max_new_tokens, "repetition_penalty": params.repetition_penalty}
    if params.greedy:
        kwargs["do_sample"] = False
    else:
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
    streamer = TextIteratorStreamer(backend.tokenizer, skip_prompt=True, skip_special_tokens=True)
    ids = torch.tensor([input_ids])

    def work():
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pixel_values=pixel_values,
                streamer=streamer,
                eos_token_id=backend.eos_token_id,
                pad_token_id=backend.pad_token_id,
                **kwargs,
            )

    worker = threading.Thread(target=work)
    worker.start()
    yield from streamer
    worker.join()


def memory_bandwidth(nbytes: int = 2**30, repeats: int = 5) -> float:
    """Bytes per second that summing a float32 tensor of ``nbytes`` reads, the best of ``repeats`` sums.

    A decode step of one sequence reads every weight once and does little with
    each, so this bounds its tokens/s (see :func:`weight_bytes_per_token`).
    """
    x = torch.ones(nbytes // 4)
    x.sum()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - start)
    return x.nbytes / min(times)


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: the decoder layers, the final norm and the output head."""
    decoder = model.get_decoder()
    modules = [*decoder.layers, decoder.norm, model.get_output_embeddings()]
    return sum(p.numel() * p.element_size() for module in modules for p in module.parameters())


def where_time_goes(run, new_tokens: int, limit: int = 8) -> dict:
    """cProfile ``run()`` (calling thread only): time in the decoder layers against everything around them.

    Returns the ms per new token inside a decoder layer (``LlamaDecoderLayer.forward``: the
    arithmetic every way shares) and outside it, and the Python functions outside the model with the most own
    time (ms per token).
    """
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(entry[2] for entry in stats.values())
    layer = inspect.unwrap(LlamaDecoderLayer.forward).__code__
    model = sum(
        entry[3]
        for (file, line, name), entry in stats.items()
        if (file, line, name) == (layer.co_filename, layer.co_firstlineno, layer.co_name)
    )
    inside_model = (
        "torch/nn/",
        "models/llama/",
        "yuren_core/modeling.py",
        "transformers/integrations/",
        "cache_utils",
    )
    outside = sorted(
        (
            (f"{Path(file).parent.name}/{Path(file).name}:{name}", entry[2])
            for (file, _, name), entry in stats.items()
            if file != "~" and not any(part in f"{file}:{name}" for part in inside_model)
        ),
        key=lambda item: -item[1],
    )
    per_token = 1e3 / new_tokens
    return {
        "ms_per_token_in_decoder_layers": round(model * per_token, 3),
        "ms_per_token_outside_decoder_layers": round((total - model) * per_token, 3),
        "top_python_outside_model_ms_per_token": {key: round(s * per_token, 4) for key, s in outside[:limit]},
    }


# The ways' names, as the tables and the record give them.
UPSTREAM, WEB_UI, BEFORE, COMPILED = (
    "upstream loop",
    "web UI (ModelBackend.stream)",
    "web UI before (generate)",
    "web UI, --compile",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with ``--smoke``'s tiny model and counts put in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=11, help="whole answers per way")
    parser.add_argument("--ttft-repeats", type=int, default=21, help="first-piece runs per way (TTFT)")
    parser.add_argument(
        "--compile", action="store_true", help="also time the web UI path with a static cache and torch.compile"
    )
    parser.add_argument("--load", type=int, default=0, help="busy processes running beside the timed answers")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 16 tokens: proves the script runs")
    parser.add_argument("--output", type=Path, help="JSON file to write (default benchmarks/results/generation.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.new_tokens, args.hidden, args.intermediate, args.layers, args.heads, args.repeats = 16, 32, 64, 1, 2, 2
        args.ttft_repeats = 3
    return args


class Ways:
    """The model on the web UI's compute thread, the prompt every way answers, and each way of answering it.

    A way takes the sampling settings and gives a run: a call that answers
    once and returns :func:`consume`'s timing and text.
    """

    def __init__(self, args: argparse.Namespace):
        self.compute = ComputeThread()
        with tempfile.TemporaryDirectory(prefix="yuren-generation-") as workdir:
            checkpoint = self.compute.call(
                build_fused,
                Path(workdir),
                hidden_size=args.hidden,
                intermediate_size=args.intermediate,
                num_layers=args.layers,
                num_heads=args.heads,
                dtype=torch.bfloat16,  # as upstream's released checkpoint; loaded in fp32 on a CPU, as the web UI does
            )
            self.model, self.tokenizer, image_processor = self.compute.call(load_model, checkpoint)
        self.backend = ModelBackend(self.model, self.tokenizer, image_processor, compute=self.compute)
        self.compute.call(suppress_end_of_turn, self.model, self.backend.eos_token_id)
        self.image = self.backend.prepare_image(Image.new("RGB", (640, 480), (200, 120, 40)))
        self.messages = [{"role": "user", "content": user_content(QUESTION, 1, self.backend.image_position)}]
        self.prompt = self.backend.build_prompt(self.messages, [self.image], args.new_tokens)
        # The compute thread does every way's work: its CPU clock times the first pieces.
        self.cpu_clock = time.pthread_getcpuclockid(self.compute.call(threading.get_ident))
        self.compiled = None
        if args.compile:
            self.compiled = ModelBackend(
                self.model, self.tokenizer, image_processor, compile=True, compute=self.compute
            )

    def whole_answers(self) -> dict[str, Callable]:
        """Every way, by name; with ``--compile`` also the web UI's on the compiled backend."""
        ways = {UPSTREAM: self.upstream, WEB_UI: self.web_ui, BEFORE: self.before}
        if self.compiled is not None:
            ways[COMPILED] = lambda params: self.web_ui(params, self.compiled)
        return ways

    def first_pieces(self) -> dict[str, Callable]:
        """The ways whose streams can be closed after their first piece (the previous path's worker thread would
        run on): given the sampling settings, the first piece's wall and CPU seconds."""
        ways = {UPSTREAM: self.upstream_first_piece, WEB_UI: self.web_ui_first_piece}
        if self.compiled is not None:
            ways[COMPILED] = lambda params: self.web_ui_first_piece(params, self.compiled)
        return ways

    def web_ui_stream(self, params: GenerationParams, server: ModelBackend | None = None) -> Iterator[str]:
        return (server or self.backend).stream(self.messages, [self.image], params, threading.Event())

    def web_ui(self, params: GenerationParams, server: ModelBackend | None = None) -> Callable[[], dict]:
        return lambda: consume(self.web_ui_stream(params, server), cumulative=False)

    def web_ui_first_piece(self, params: GenerationParams, server: ModelBackend | None = None) -> dict[str, float]:
        timed = first_piece(self.web_ui_stream(params, server), self.cpu_clock)
        # The closed stream's step in flight finishes before the next run starts its clock (and the CPU clock).
        self.compute.call(lambda: None)
        return timed

    def rendered(self, params: GenerationParams):
        # Every way renders the prompt inside its timing, as the web UI path does (same renderer, same cost).
        fitted = self.backend.build_prompt(self.messages, [self.image], params.max_new_tokens)
        return fitted.input_ids, torch.stack(fitted.images)

    def before(self, params: GenerationParams) -> Callable[[], dict]:
        # Rendered on the compute thread: stacking the image is tensor work, which the main thread never does.
        return lambda: consume(
            generate_before(self.backend, *self.compute.call(self.rendered, params), params), cumulative=False
        )

    @torch.inference_mode()
    def upstream_pieces(self, params: GenerationParams) -> Iterator[str]:
        input_ids, pixels = self.rendered(params)
        yield from upstream_stream(self.model, self.tokenizer, input_ids, pixels, params, self.backend.eos_token_id)

    def upstream(self, params: GenerationParams) -> Callable[[], dict]:
        return lambda: self.compute.call(consume, self.upstream_pieces(params), cumulative=True)

    def upstream_first_piece(self, params: GenerationParams) -> dict[str, float]:
        return self.compute.call(first_piece, self.upstream_pieces(params), self.cpu_clock)

    def before_in_this_thread(self, params: GenerationParams) -> None:
        """The previous path's ``generate`` call alone, in the calling thread (what its profile shows)."""
        input_ids = torch.tensor([self.prompt.input_ids])
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=torch.stack(self.prompt.images),
                streamer=TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True),
                max_new_tokens=params.max_new_tokens,
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=0,
                repetition_penalty=params.repetition_penalty,
                eos_token_id=self.backend.eos_token_id,
                pad_token_id=self.backend.pad_token_id,
            )


def check_greedy_answers_agree(ways: dict[str, Callable], greedy: GenerationParams) -> None:
    """Every way must give the same greedy answer: they compute the same thing."""
    answers = {name: way(greedy)()["text"] for name, way in ways.items()}
    if len(set(answers.values())) != 1:
        raise AssertionError(f"greedy answers differ between the ways: {answers}")


def time_interleaved(runs: dict[str, Callable[[], dict]], repeats: int, load: int) -> dict[str, list[dict]]:
    """What each run returns, ``repeats`` times each, the runs interleaved beside ``load`` busy processes."""
    outcomes: dict[str, list[dict]] = {name: [] for name in runs}

    def recorded(name):
        return lambda: outcomes[name].append(runs[name]())

    with busy_processes(load):
        interleaved({name: recorded(name) for name in runs}, repeats)
    return outcomes


def summarize(answers: dict[str, list[dict]], firsts: dict[str, list[dict]], new_tokens: int) -> dict[str, dict]:
    """Each way's medians over its whole answers and its first-piece runs, the warm-up run of each left out."""
    summary = {}
    for name, runs in answers.items():
        runs = runs[1:]  # the warm-up run
        summary[name] = {
            "ttft_ms": median([r["ttft"] for r in runs]) * 1e3,
            "tokens_per_s": median([new_tokens / r["total"] for r in runs]),
            # After the first piece: decode steps alone (what the bandwidth ceiling bounds), prefill left out.
            "decode_tokens_per_s": median([(new_tokens - 1) / (r["total"] - r["ttft"]) for r in runs]),
            "total_s": median([r["total"] for r in runs]),
        }
    for name, runs in firsts.items():
        runs = runs[1:]  # the warm-up run
        summary[name]["first_piece_ttft_ms"] = median([r["ttft"] for r in runs]) * 1e3
        summary[name]["first_piece_ttft_cpu_ms"] = median([r["ttft_cpu"] for r in runs]) * 1e3
    return summary


def ttft_ratio_of(runs: dict[str, list[dict]]) -> float:
    """Upstream's median TTFT over the web UI's, warm-up runs left out."""
    return ratio_of_medians([r["ttft"] for r in runs[UPSTREAM][1:]], [r["ttft"] for r in runs[WEB_UI][1:]])


def print_timings(args, prompt_tokens: int, summary: dict[str, dict], bandwidth: float, weight_bytes: int) -> None:
    """The table of each way's TTFT and tokens/s, against upstream's and the bandwidth ceiling."""
    ceiling = bandwidth / weight_bytes
    print_table(
        f"Generation: {prompt_tokens}-token prompt with one image, {args.new_tokens} new tokens, "
        f"{args.layers} layers x {args.hidden} hidden, {args.load} busy processes beside; median of {args.repeats}; "
        f"{weight_bytes / 1e9:.2f} GB of weights per token at {bandwidth / 1e9:.1f} GB/s: ceiling {ceiling:.2f} tok/s",
        [
            "way",
            "TTFT ms",
            f"TTFT ms, {args.ttft_repeats} first pieces",
            "(compute thread CPU)",
            "tok/s",
            "speedup (tok/s)",
            "decode tok/s",
            "share of ceiling",
        ],
        [
            [
                name,
                s["ttft_ms"],
                s.get("first_piece_ttft_ms", "-"),
                s.get("first_piece_ttft_cpu_ms", "-"),
                s["tokens_per_s"],
                s["tokens_per_s"] / summary[UPSTREAM]["tokens_per_s"],
                s["decode_tokens_per_s"],
                s["decode_tokens_per_s"] / ceiling,
            ]
            for name, s in summary.items()
        ],
    )


def profile_ways(ways: Ways, params: GenerationParams) -> dict[str, dict]:
    """:func:`where_time_goes` for each way, on the compute thread (where its work runs; the web UI's stream runs
    inline there)."""
    new_tokens = params.max_new_tokens
    compute = ways.compute
    return {
        UPSTREAM: compute.call(
            where_time_goes, lambda: consume(ways.upstream_pieces(params), cumulative=True), new_tokens
        ),
        WEB_UI: compute.call(where_time_goes, ways.web_ui(params), new_tokens),
        BEFORE: compute.call(where_time_goes, lambda: ways.before_in_this_thread(params), new_tokens),
    }


def print_profiles(profiles: dict[str, dict]) -> None:
    """The table of where each way's time per token goes."""
    print_table(
        "Where the time goes (cProfile on the compute thread; the previous path profiled as its generate call)",
        ["way", "ms/token in decoder layers", "ms/token outside them", "top Python outside the model (ms/token)"],
        [
            [
                name,
                p["ms_per_token_in_decoder_layers"],
                p["ms_per_token_outside_decoder_layers"],
                ", ".join(f"{k} {v}" for k, v in list(p["top_python_outside_model_ms_per_token"].items())[:3]),
            ]
            for name, p in profiles.items()
        ],
    )


def settings_of(args, model, sampling: GenerationParams) -> dict:
    """The record's settings: the model's size, the sampling and the run's counts."""
    return {
        "hidden": args.hidden,
        "intermediate": args.intermediate,
        "layers": args.layers,
        "heads": args.heads,
        "vocab_size": model.get_output_embeddings().out_features,
        "image_patches": model.config.image_seq_len,
        "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p, "repetition_penalty": 1.1},
        "repeats": args.repeats,
        "ttft_repeats": args.ttft_repeats,
        "load_processes": args.load,
        "smoke": args.smoke,
        "compile": args.compile,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> dict:
    """Time every way, print the tables, write the record; returns its results."""
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    ways = Ways(args)
    sampling = GenerationParams(max_new_tokens=args.new_tokens)
    check_greedy_answers_agree(ways.whole_answers(), GenerationParams(max_new_tokens=args.new_tokens, temperature=0.0))

    bandwidth = ways.compute.call(memory_bandwidth, 2**26 if args.smoke else 2**30)
    weight_bytes = weight_bytes_per_token(ways.model)
    ceiling = bandwidth / weight_bytes
    runs = {name: way(sampling) for name, way in ways.whole_answers().items()}
    answers = time_interleaved(runs, args.repeats, args.load)
    # A whole answer gives one TTFT sample per run; first-piece runs (stream closed after it) give many more.
    runs = {name: lambda way=way: way(sampling) for name, way in ways.first_pieces().items()}
    firsts = time_interleaved(runs, args.ttft_repeats, args.load)
    summary = summarize(answers, firsts, args.new_tokens)
    speedup = summary[WEB_UI]["tokens_per_s"] / summary[UPSTREAM]["tokens_per_s"]
    ttft_ratio = ttft_ratio_of(firsts)
    print_timings(args, len(ways.prompt.input_ids), summary, bandwidth, weight_bytes)
    profiles = profile_ways(ways, sampling)
    print_profiles(profiles)

    results = {
        "prompt_tokens": len(ways.prompt.input_ids),
        "new_tokens": args.new_tokens,
        "ways": {name: {k: round(v, 3) for k, v in s.items()} for name, s in summary.items()},
        "speedup_tokens_per_s": round(speedup, 3),
        "ttft_ratio_upstream_over_web_ui": round(ttft_ratio, 3),
        "ttft_ratio_in_whole_answers": round(ttft_ratio_of(answers), 3),
        "greedy_outputs_identical": True,
        "bandwidth_gb_per_s": round(bandwidth / 1e9, 3),
        "weight_bytes_per_token": weight_bytes,
        "ceiling_tokens_per_s": round(ceiling, 3),
        "decode_share_of_ceiling": {name: round(s["decode_tokens_per_s"] / ceiling, 3) for name, s in summary.items()},
        "profiles": profiles,
        "targets": [
            target("web UI tokens/s >= 1.2x upstream loop", speedup, 1.2),
            target("web UI TTFT no worse than upstream loop (upstream / web UI >= 1)", ttft_ratio, 1.0),
        ],
    }
    write_record("generation", args.output, settings_of(args, ways.model, sampling), results)
    return results


if __name__ == "__main__":
    main()
