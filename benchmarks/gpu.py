"""GPU figures for a Baichuan-7B-shaped YuRen on one H100 or H200: decode speed, training MFU, 8-bit decode.

Nothing is downloaded: the models are random-initialised with the real
shapes (LLaMA layout, hidden 4096, 32 layers, 32 heads, intermediate 11008,
vocabulary 64000 padded to 64128; open_clip's ViT-L/14 tower config, 256
patch tokens per image). Sections, each written to the JSON as soon as it
finishes (a failing section records its error and the rest still run):

``decode``
    batch 1, bf16, a ~300-token prompt with one image, 256 new tokens (greedy,
    end-of-turn suppressed): time to first token and decode tokens/s, eager
    (dynamic cache) and with a static cache + ``torch.compile`` (transformers'
    auto-compile, ``reduce-overhead``). Also the memory-bandwidth ceiling,
    weight bytes read per token (everything but the input embedding and the
    vision side) / HBM bandwidth, and the share of it the compiled path reaches.
``training``
    one training step (forward, backward, fused AdamW on bf16 weights) of the
    text model with the 7B layer shapes, truncated to the depth that fits,
    on rows of 2048 tokens: stage 1's packing (``yuren_trainer``) with
    per-conversation attention (``yuren_trainer.segment_attention``: FlashAttention varlen),
    the same rows with transformers' dense block mask, and the same
    conversations padded one per row. Conversation lengths are drawn from a
    fixed log-normal (median ~700 tokens). Real (non-padding) tokens/s and MFU
    = 6 x parameters (input embedding excluded) x real tokens/s / dense bf16 peak.
``int8``
    the decode model saved and reloaded through ``yuren_core.loading.load_model(load_8bit=True)``:
    decode tokens/s for reference.

    python benchmarks/gpu.py                 # one H100/H200, < 8 minutes
    python benchmarks/gpu.py --smoke         # tiny shapes on CPU, well under a minute (CI)
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
import transformers
from common import RESULTS, machine
from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

from yuren_core import vocab
from yuren_core.decoding import Decoder
from yuren_core.loading import load_model
from yuren_core.modeling import YuRenConfig, YuRenForCausalLM
from yuren_trainer.collator import PackedCollator, PaddingCollator
from yuren_trainer.packing import pack_rows
from yuren_trainer.segment_attention import register as register_segment_attention

# Device-name substring -> (HBM bandwidth in bytes/s, dense bf16 peak in FLOP/s), most specific first.
GPU_SPECS = {
    "H200": (4.8e12, 989e12),
    "H100 NVL": (3.9e12, 835e12),
    "H100 PCIe": (2.0e12, 756e12),
    "H100": (3.35e12, 989e12),
}
SHAPES = {
    "full": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "intermediate_size": 11008,
        "text_vocab": 64000,
        "vocab_size": 64128,
        "vision": "ViT-L-14",
    },
    "smoke": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "text_vocab": 250,
        "vocab_size": 256,
        "vision": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8}},
    },
}
BOS, EOS = 1, 2


class TokenTimer(BaseStreamer):
    """A streamer that only notes when each new token arrives (``generate`` syncs the device to hand it over)."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def special_ids(shapes: dict):
    """YuRen's special token ids in the placeholder tokenizer, which puts them right after the text vocabulary."""
    return vocab.special_ids(placeholder_tokenizer(shapes))


def vision_config(shapes: dict) -> dict:
    """open_clip's config of the tower (the ViT-L/14 one ships with open_clip: no download)."""
    config = open_clip.get_model_config(shapes["vision"]) if isinstance(shapes["vision"], str) else shapes["vision"]
    return {
        "embed_dim": config["embed_dim"],
        "quick_gelu": config.get("quick_gelu", False),
        "vision_cfg": config["vision_cfg"],
    }


def text_config(shapes: dict, **overrides) -> dict:
    ids = special_ids(shapes)
    settings = {
        "vocab_size": shapes["vocab_size"],
        "hidden_size": shapes["hidden_size"],
        "intermediate_size": shapes["intermediate_size"],
        "num_hidden_layers": shapes["num_hidden_layers"],
        "num_attention_heads": shapes["num_attention_heads"],
        "num_key_value_heads": shapes["num_attention_heads"],
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": ids.pad,
        "tie_word_embeddings": False,
    }
    return {**settings, **overrides}


def build_yuren(shapes: dict, device: torch.device, dtype: torch.dtype) -> YuRenForCausalLM:
    """A random-initialised YuRen model of ``shapes``, created directly on ``device``."""
    ids = special_ids(shapes)
    tower = vision_config(shapes)
    size = tower["vision_cfg"]["image_size"]
    config = YuRenConfig(
        **text_config(shapes),
        open_clip_config=tower,
        image_preprocess_config={
            "size": [size, size],
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
        img_start_token_id=ids.img_start,
        img_patch_token_id=ids.img_patch,
        img_end_token_id=ids.img_end,
    )
    with torch.device(device):
        model = YuRenForCausalLM._from_config(config, dtype=dtype)
    return model.eval()


def image_prompt(shapes: dict, patches: int, text_tokens: int, device) -> torch.Tensor:
    """``[1, n]`` ids: a user turn with one image block and ``text_tokens`` random text tokens, then the assistant's."""
    ids = special_ids(shapes)
    generator = torch.Generator().manual_seed(0)
    half = text_tokens // 2
    text = torch.randint(3, shapes["text_vocab"], (text_tokens,), generator=generator).tolist()
    tokens = [BOS, ids.im_start, *text[:half], ids.img_start, *[ids.img_patch] * patches, ids.img_end]
    tokens += [*text[half:], ids.im_end, ids.im_start, *text[:2]]
    return torch.tensor([tokens], device=device)


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: the language model without its input embedding (one row of it)."""
    skipped = ("vision_tower.", "mm_projector.", "model.embed_tokens.")
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters() if not name.startswith(skipped))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_generate(model, input_ids, pixel_values, new_tokens: int, **kwargs) -> dict[str, float]:
    """Greedy-generate exactly ``new_tokens``; time to first token and decode tokens/s after it."""
    timer = TokenTimer()
    sync(input_ids.device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values=pixel_values,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=EOS,
            pad_token_id=model.config.pad_token_id,
            streamer=timer,
            **kwargs,
        )
    sync(input_ids.device)
    total = time.perf_counter() - start
    decode = (len(timer.times) - 1) / (timer.times[-1] - timer.times[0]) if len(timer.times) > 1 else float("nan")
    return {
        "ttft_ms": (timer.times[0] - start) * 1e3,
        "decode_tokens_per_s": decode,
        "end_to_end_tokens_per_s": len(timer.times) / total,
        "new_tokens": len(timer.times),
    }


def timed_decoder(decoder: Decoder, input_ids, pixel_values, new_tokens: int) -> dict[str, float]:
    """The web UI's decode path (``yuren_core.decoding.Decoder``), greedy, end of turn never chosen: as above."""
    device = input_ids.device
    times = []
    sync(device)
    start = time.perf_counter()
    # stop_ids stay empty: the random model may pick EOS, and every run must decode exactly new_tokens.
    for _ in decoder.tokens(input_ids[0].tolist(), pixel_values=pixel_values, max_new_tokens=new_tokens):
        times.append(time.perf_counter())  # each token is a Python int: the device has synced
    total = time.perf_counter() - start
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return {
        "ttft_ms": (times[0] - start) * 1e3,
        "decode_tokens_per_s": decode,
        "end_to_end_tokens_per_s": len(times) / total,
        "new_tokens": len(times),
    }


def decoder_matches_generate(model, decoder: Decoder, input_ids, pixel_values, new_tokens: int = 32) -> bool:
    """Whether the web UI's decoder picks ``generate``'s greedy tokens, end of turn included.

    The tests check its logits against ``generate``'s bit for bit on the CPU; this is the check on the device itself.
    """
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values=pixel_values,
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=[],
            pad_token_id=model.config.pad_token_id,
        )
    expected = out[0, input_ids.shape[1] :].tolist()
    ours = list(decoder.tokens(input_ids[0].tolist(), pixel_values=pixel_values, max_new_tokens=new_tokens))
    return ours == expected


def decode_section(args, shapes, device, spec, record: dict) -> None:
    dtype = torch.bfloat16
    model = build_yuren(shapes, device, dtype)
    patches = model.config.image_seq_len
    input_ids = image_prompt(shapes, patches, args.prompt_text_tokens, device)
    size = model.config.open_clip_config["vision_cfg"]["image_size"]
    pixel_values = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    weights = weight_bytes_per_token(model)
    result: dict = {"prompt_tokens": input_ids.shape[1], "image_patches": patches, "weight_bytes_per_token": weights}
    record["decode"] = result

    timed_generate(model, input_ids, pixel_values, 4)  # warm-up: kernels, allocator
    result["eager"] = timed_generate(model, input_ids, pixel_values, args.new_tokens)

    compile_config = CompileConfig(mode="reduce-overhead")
    if device.type != "cuda":
        # CI on CPU: trace with dynamo but skip inductor's code generation, which takes minutes there.
        compile_config = CompileConfig(backend="eager", mode=None)
        compile_config._compile_all_devices = True
    start = time.perf_counter()
    timed_generate(
        model, input_ids, pixel_values, args.new_tokens, cache_implementation="static", compile_config=compile_config
    )
    result["compile_and_first_run_s"] = time.perf_counter() - start
    result["static_compiled"] = timed_generate(
        model, input_ids, pixel_values, args.new_tokens, cache_implementation="static", compile_config=compile_config
    )
    # The web UI's path: the decoder, eager and (on a GPU) compiled on a static cache.
    eager_decoder = Decoder(model)
    result["decoder_tokens_match_generate"] = decoder_matches_generate(model, eager_decoder, input_ids, pixel_values)
    timed_decoder(eager_decoder, input_ids, pixel_values, 4)
    result["decoder_eager"] = timed_decoder(eager_decoder, input_ids, pixel_values, args.new_tokens)
    if device.type == "cuda":  # inductor on CPU takes minutes: CI checks the eager decoder only
        compiled_decoder = Decoder(model, compile=True)
        start = time.perf_counter()
        timed_decoder(compiled_decoder, input_ids, pixel_values, args.new_tokens)
        result["decoder_compile_and_first_run_s"] = time.perf_counter() - start
        result["decoder_compiled"] = timed_decoder(compiled_decoder, input_ids, pixel_values, args.new_tokens)
    bandwidth = spec[0] if spec else None
    if bandwidth:
        ceiling = bandwidth / weights
        reached = result["static_compiled"]["decode_tokens_per_s"] / ceiling
        result.update(bandwidth_bytes_per_s=bandwidth, ceiling_tokens_per_s=ceiling, ceiling_share_compiled=reached)
        result["target"] = {"target": "compiled decode >= 60% of the bandwidth ceiling", "met": reached >= 0.6}
        if "decoder_compiled" in result:
            result["ceiling_share_decoder_compiled"] = result["decoder_compiled"]["decode_tokens_per_s"] / ceiling
    if args.int8:
        checkpoint = Path(args.workdir) / "decode-model"
        model.save_pretrained(checkpoint)
        placeholder_tokenizer(shapes).save_pretrained(checkpoint)
        record["int8"] = {"checkpoint_saved": str(checkpoint)}


def placeholder_tokenizer(shapes: dict):
    """A word-level tokenizer over the vocabulary's ids with YuRen's special tokens: ``load_model`` loads one.

    Decoding speed does not depend on it; the real one is Baichuan's, which cannot be downloaded here.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from yuren_core.constants import SPECIAL_TOKENS

    vocab = {f"t{i}": i for i in range(shapes["text_vocab"])}
    vocab.update({token: shapes["text_vocab"] + i for i, token in enumerate(SPECIAL_TOKENS)})
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")), bos_token="t1", eos_token="t2", unk_token="t0"
    )


def int8_section(args, shapes, device, record: dict) -> None:
    checkpoint = Path(record["int8"]["checkpoint_saved"])
    model, _, _ = load_model(
        checkpoint, load_8bit=True, device_map={"": device.index or 0} if device.type == "cuda" else None
    )
    patches = model.config.image_seq_len
    input_ids = image_prompt(shapes, patches, args.prompt_text_tokens, device)
    size = model.config.open_clip_config["vision_cfg"]["image_size"]
    pixel_values = torch.randn(1, 3, size, size, device=device, dtype=torch.float16)
    timed_generate(model, input_ids, pixel_values, 4)
    record["int8"]["decode"] = timed_generate(model, input_ids, pixel_values, args.int8_new_tokens)
    record["int8"]["memory_footprint_gib"] = model.get_memory_footprint() / 2**30


def conversation_columns(count: int, max_length: int, vocab: int, seed: int) -> dict[str, list]:
    """Random conversations, log-normal lengths with median ~a third of ``max_length`` (~700 tokens at 2048).

    The first 30% of each conversation is unsupervised (the prompt).
    """
    rng = random.Random(seed)
    columns: dict[str, list] = {"input_ids": [], "labels": [], "images": []}
    median_length = max_length * 700 / 2048
    for _ in range(count):
        length = min(max_length, max(16, int(rng.lognormvariate(math.log(median_length), 0.6))))
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = int(0.3 * length)
        columns["input_ids"].append(ids)
        columns["labels"].append([-100] * prompt + ids[prompt:])
        columns["images"].append([])
    return columns


def training_batches(args, shapes) -> dict[str, dict[str, torch.Tensor]]:
    """The packed batch (``args.rows`` rows of up to ``args.seq_len``) and the same conversations padded one per row."""
    pad = special_ids(shapes).pad
    columns = conversation_columns(args.rows * 8, args.seq_len, shapes["text_vocab"], seed=0)
    packed = pack_rows(columns, args.seq_len)
    order = sorted(range(len(packed["length"])), key=lambda i: -packed["length"][i])[: args.rows]
    rows = [{k: packed[k][i] for k in ("input_ids", "labels", "seq_lengths")} for i in order]
    packed_batch = PackedCollator(pad)(rows)
    conversations = []
    for row in rows:
        offset = 0
        for length in row["seq_lengths"]:
            ids = row["input_ids"][offset : offset + length]
            conversations.append({"input_ids": ids, "labels": row["labels"][offset : offset + length]})
            offset += length
    return {"packed": packed_batch, "padded": PaddingCollator(pad)(conversations)}


def layers_that_fit(shapes: dict, computed_tokens: int, device) -> int:
    """How many 7B-shaped layers a training step of ``computed_tokens`` fits in (bf16 weights, grads, AdamW states)."""
    if device.type != "cuda":
        return shapes["num_hidden_layers"]
    hidden, inner, vocab = shapes["hidden_size"], shapes["intermediate_size"], shapes["vocab_size"]
    per_layer_params = 4 * hidden * hidden + 3 * hidden * inner
    state_bytes = 8  # bf16 weight + bf16 grad + two bf16 AdamW moments
    # Megatron-LM's estimate for bf16 activations kept for backward (34 x hidden bytes per token and layer, flash
    # attention), with the SwiGLU MLP's three intermediate-width tensors in place of its 4 x hidden one.
    activation_bytes = computed_tokens * (26 * hidden + 6 * inner)
    fixed = 2 * vocab * hidden * state_bytes + computed_tokens * vocab * 10  # embeddings, head; logits + fp32 loss
    free, _ = torch.cuda.mem_get_info()
    fit = int((0.85 * free - fixed) / (per_layer_params * state_bytes + activation_bytes))
    return max(1, min(shapes["num_hidden_layers"], fit))


def training_section(args, shapes, device, spec, record: dict) -> None:
    batches = {
        name: {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for name, batch in training_batches(args, shapes).items()
    }
    computed = max(b["input_ids"].numel() for b in batches.values())
    layers = layers_that_fit(shapes, computed, device)
    result: dict = {"seq_len": args.seq_len, "packed_rows": args.rows}
    record["training"] = result
    while True:
        try:
            result.update(_train(args, shapes, device, spec, batches, layers))
            return
        except torch.OutOfMemoryError:
            if layers == 1:
                raise
            layers //= 2
            gc.collect()
            torch.cuda.empty_cache()


def _train(args, shapes, device, spec, batches, layers) -> dict:
    segment = register_segment_attention()
    config = LlamaConfig(**text_config(shapes, num_hidden_layers=layers, use_cache=False))
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    parameters = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("model.embed_tokens."))
    ways = {
        "packed, per-conversation attention": (segment, batches["packed"]),
        "packed, dense block mask": ("sdpa", batches["packed"]),
        "padded, one conversation per row": ("sdpa", batches["padded"]),
    }

    def step(attention: str, batch: dict) -> float:
        model.set_attn_implementation(attention)
        sync(device)
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in ways}
    for attention, batch in ways.values():
        step(attention, batch)  # warm-up
    for _ in range(args.train_steps):
        for name, (attention, batch) in ways.items():
            times[name].append(step(attention, batch))
    peak = spec[1] if spec else None
    out: dict = {"layers": layers, "parameters_without_input_embedding": parameters, "ways": {}}
    for name, (_, batch) in ways.items():
        real = int((batch["input_ids"] != config.pad_token_id).sum())
        seconds = sorted(times[name])[len(times[name]) // 2]
        way = {
            "computed_tokens": batch["input_ids"].numel(),
            "real_tokens": real,
            "step_s": seconds,
            "real_tokens_per_s": real / seconds,
        }
        if peak:
            way["mfu"] = 6 * parameters * way["real_tokens_per_s"] / peak
        out["ways"][name] = way
    if peak:
        out["peak_flops"] = peak
        packed_mfu = out["ways"]["packed, per-conversation attention"]["mfu"]
        out["target"] = {"target": "packed MFU >= 30%", "met": packed_mfu >= 0.3}
    return out


def run_section(name: str, record: dict, output: Path, section: Callable[[], None]) -> None:
    """Run one section, noting its time or its error, and write the record so far."""
    start = time.perf_counter()
    try:
        section()
        record.setdefault("sections", {})[name] = {"ok": True, "seconds": round(time.perf_counter() - start, 1)}
    except Exception as error:  # noqa: BLE001 - one failed section must not lose the others' figures
        traceback.print_exc()
        record.setdefault("sections", {})[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    write(record, output)


def write(record: dict, output: Path) -> None:
    import json

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2, default=float) + "\n", encoding="utf-8")


def print_summary(record: dict) -> None:
    decode = record.get("decode", {})
    for mode in ("eager", "static_compiled"):
        if mode in decode:
            d = decode[mode]
            print(f"decode {mode:16s} TTFT {d['ttft_ms']:8.1f} ms   {d['decode_tokens_per_s']:8.1f} tok/s")
    if "ceiling_tokens_per_s" in decode:
        print(
            f"bandwidth ceiling {decode['ceiling_tokens_per_s']:.0f} tok/s; "
            f"compiled reaches {100 * decode['ceiling_share_compiled']:.0f}%"
        )
    for name, way in record.get("training", {}).get("ways", {}).items():
        mfu = f"   MFU {100 * way['mfu']:.1f}%" if "mfu" in way else ""
        print(f"train {name:38s} {way['real_tokens_per_s']:10.0f} real tok/s{mfu}")
    if "decode" in record.get("int8", {}):
        print(f"8-bit decode {record['int8']['decode']['decode_tokens_per_s']:.1f} tok/s")
    for name, section in record.get("sections", {}).items():
        if not section["ok"]:
            print(f"section {name} FAILED: {section['error']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on whatever device there is (CPU in CI)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-text-tokens", type=int, default=40, help="text tokens around the image in the prompt")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=2, help="packed rows per training step")
    parser.add_argument("--train-steps", type=int, default=3, help="timed steps per way (after one warm-up)")
    parser.add_argument("--int8-new-tokens", type=int, default=64)
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip the 8-bit section")
    parser.add_argument("--bandwidth", type=float, help="HBM bytes/s, for a GPU this script does not know")
    parser.add_argument("--peak-flops", type=float, help="dense bf16 FLOP/s, for a GPU this script does not know")
    parser.add_argument("--output", type=Path, default=RESULTS / "gpu.json")
    args = parser.parse_args(argv)
    shapes = SHAPES["smoke" if args.smoke else "full"]
    if args.smoke:
        args.new_tokens, args.prompt_text_tokens, args.seq_len, args.rows = 8, 8, 256, 2
        args.train_steps, args.int8_new_tokens = 1, 4
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("gpu.py needs a CUDA GPU (or --smoke for the tiny CPU run)")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    spec = next((s for key, s in GPU_SPECS.items() if key in name), None)
    if args.bandwidth or args.peak_flops:
        spec = (args.bandwidth or (spec or (None, None))[0], args.peak_flops or (spec or (None, None))[1])
    record: dict = {
        "benchmark": "gpu",
        "command": " ".join(["python", "benchmarks/gpu.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "device": name,
        "cuda": torch.version.cuda,
        "spec": {"bandwidth_bytes_per_s": spec[0], "peak_bf16_flops": spec[1]} if spec else None,
        "shapes": shapes,
        "settings": {k: v for k, v in vars(args).items() if k != "output"} | {"output": str(args.output)},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="yuren-gpu-") as workdir:
        args.workdir = workdir
        run_section("decode", record, args.output, lambda: decode_section(args, shapes, device, spec, record))
        run_section("training", record, args.output, lambda: training_section(args, shapes, device, spec, record))
        if args.int8 and "int8" in record:
            run_section("int8", record, args.output, lambda: int8_section(args, shapes, device, record))
    record["total_seconds"] = round(time.perf_counter() - start, 1)
    write(record, args.output)
    print_summary(record)
    print(f"\nwrote {args.output} in {record['total_seconds']:.0f} s")
    return record


if __name__ == "__main__":
    main()
