"""Image-feature splice: YuRen's vectorised ``merge_image_features`` against a per-sample Python loop.

The loop is upstream's (LLaVA's) way: for each sample, find its
``<|img_start|>`` tokens, check the ``<|img_end|>`` after each image block, and
``torch.cat`` text embeddings and image features back together, then stack
the samples. YuRen writes all features into the patch-token positions of the
whole batch in one ``index_copy`` of token rows. A third contender is the
``masked_scatter`` over an element mask YuRen used before (this benchmark showed
its backward to be slower than the loop).

The batch: 16 samples, a quarter text-only, the rest with one or two images of
256 patch tokens each, text of random length around them, right-padded. All
ways must give bit-identical embeddings and gradients; the script checks that
before timing. Timed: the forward splice, and forward plus backward (training
runs both).

    uv run python benchmarks/splice.py            # 7B hidden size, ~1 minute
    uv run python benchmarks/splice.py --smoke    # seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import interleaved, median, print_table, ratio_of_medians, target, write_record

from yuren_core.modeling import merge_image_features

PAD, IMG_PATCH, IMG_START, IMG_END = 0, 1, 2, 3
FIRST_TEXT_ID = 10


def make_batch(batch_size: int, patches: int, hidden: int, *, max_text: int, seed: int = 0):
    """``(input_ids, inputs_embeds, image_features)`` of a mixed batch; both float tensors require grad."""
    generator = torch.Generator().manual_seed(seed)
    samples: list[list[int]] = []
    images = 0
    for index in range(batch_size):
        sample_images = [0, 1, 1, 2][index % 4]
        ids: list[int] = []
        for _ in range(sample_images + 1):
            text = int(torch.randint(max_text // 4, max_text, (1,), generator=generator))
            ids += torch.randint(FIRST_TEXT_ID, 1000, (text,), generator=generator).tolist()
            if sample_images:
                ids += [IMG_START] + [IMG_PATCH] * patches + [IMG_END]
                sample_images -= 1
                images += 1
        samples.append(ids)
    length = max(len(ids) for ids in samples)
    input_ids = torch.full((batch_size, length), PAD, dtype=torch.long)
    for row, ids in enumerate(samples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
    inputs_embeds = torch.randn(batch_size, length, hidden, generator=generator).requires_grad_()
    image_features = torch.randn(images, patches, hidden, generator=generator).requires_grad_()
    return input_ids, inputs_embeds, image_features


def per_sample_splice(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, image_features: torch.Tensor
) -> torch.Tensor:
    """Upstream's way: per sample, cut the embeddings at each image block and concatenate the features in."""
    merged = []
    image_index = 0
    for sample_ids, sample_embeds in zip(input_ids, inputs_embeds, strict=True):
        starts = torch.where(sample_ids == IMG_START)[0]
        if len(starts) == 0:
            merged.append(sample_embeds)
            continue
        pieces = []
        cursor = 0
        for start in starts.tolist():
            features = image_features[image_index]
            end = start + 1 + features.shape[0]
            if sample_ids[end] != IMG_END:
                raise ValueError(f"image {image_index}: no <|img_end|> after its {features.shape[0]} patch tokens")
            pieces += [sample_embeds[cursor : start + 1], features]
            cursor = end
            image_index += 1
        pieces.append(sample_embeds[cursor:])
        merged.append(torch.cat(pieces))
    return torch.stack(merged)


def vectorised_splice(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, image_features: torch.Tensor
) -> torch.Tensor:
    """YuRen's way (the model's own function)."""
    return merge_image_features(inputs_embeds, input_ids, image_features, IMG_PATCH)


def masked_scatter_splice(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, image_features: torch.Tensor
) -> torch.Tensor:
    """YuRen's earlier way: ``masked_scatter`` through the token mask expanded to every hidden element."""
    mask = (input_ids == IMG_PATCH).unsqueeze(-1).expand_as(inputs_embeds)
    return inputs_embeds.masked_scatter(mask, image_features.reshape(-1, inputs_embeds.shape[-1]))


UPSTREAM = "per-sample loop (upstream)"
YUREN = "index_copy (YuRen)"
SPLICES = {
    UPSTREAM: per_sample_splice,
    YUREN: vectorised_splice,
    "masked_scatter (YuRen before)": masked_scatter_splice,
}


def check_identical(input_ids, inputs_embeds, image_features) -> None:
    """All splices give the same embeddings and the same gradients, bit for bit."""
    outputs, gradients = [], []
    upstream_gradient = torch.randn(inputs_embeds.shape, generator=torch.Generator().manual_seed(1))
    for splice in SPLICES.values():
        inputs_embeds.grad = image_features.grad = None
        output = splice(inputs_embeds, input_ids, image_features)
        output.backward(upstream_gradient)
        outputs.append(output.detach())
        gradients.append((inputs_embeds.grad.clone(), image_features.grad.clone()))
    inputs_embeds.grad = image_features.grad = None
    for name, output, grads in zip(SPLICES, outputs, gradients, strict=True):
        if not torch.equal(output, outputs[0]):
            raise AssertionError(f"{name} gives different embeddings from {UPSTREAM}")
        if not all(torch.equal(a, b) for a, b in zip(grads, gradients[0], strict=True)):
            raise AssertionError(f"{name} gives different gradients from {UPSTREAM}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patches", type=int, default=256, help="patch tokens per image (ViT-L/14 at 224: 256)")
    parser.add_argument("--hidden", type=int, default=4096, help="embedding width (Baichuan-7B: 4096)")
    parser.add_argument("--max-text", type=int, default=300, help="longest text run between images, in tokens")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, two repeats: proves the script runs")
    parser.add_argument("--output", type=Path, help="JSON file to write (default benchmarks/results/splice.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.hidden, args.repeats, args.patches, args.max_text = 64, 2, 16, 40

    input_ids, inputs_embeds, image_features = make_batch(
        args.batch_size, args.patches, args.hidden, max_text=args.max_text
    )
    check_identical(input_ids, inputs_embeds, image_features)
    upstream_gradient = torch.randn(inputs_embeds.shape)

    def forward(splice):
        def run():
            with torch.no_grad():
                splice(inputs_embeds, input_ids, image_features)

        return run

    def forward_backward(splice):
        def run():
            inputs_embeds.grad = image_features.grad = None
            splice(inputs_embeds, input_ids, image_features).backward(upstream_gradient)

        return run

    timings = {
        "forward": interleaved({name: forward(s) for name, s in SPLICES.items()}, args.repeats),
        "forward+backward": interleaved({name: forward_backward(s) for name, s in SPLICES.items()}, args.repeats),
    }
    rows, results = [], {}
    for phase, times in timings.items():
        speedups = {name: round(ratio_of_medians(times[UPSTREAM], t), 3) for name, t in times.items()}
        for name, t in times.items():
            rows.append([phase, name, median(t) * 1e3, speedups[name]])
        results[phase] = {
            "median_ms": {name: round(median(t) * 1e3, 3) for name, t in times.items()},
            "speedup": speedups,
        }
    print_table(
        f"Image-feature splice: batch {args.batch_size}, {image_features.shape[0]} images x {args.patches} patches, "
        f"{input_ids.shape[1]} tokens/row, hidden {args.hidden}; median of {args.repeats}",
        ["phase", "splice", "median ms", "speedup vs loop"],
        rows,
    )
    results["identical_outputs_and_gradients"] = True
    results["targets"] = [
        target(f"{YUREN}: {phase} speedup >= 2x", results[phase]["speedup"][YUREN], 2.0) for phase in timings
    ]
    settings = {
        "batch_size": args.batch_size,
        "patches": args.patches,
        "hidden": args.hidden,
        "images": image_features.shape[0],
        "text_only_samples": sum(int((row == IMG_START).sum()) == 0 for row in input_ids),
        "tokens_per_row": input_ids.shape[1],
        "repeats": args.repeats,
        "smoke": args.smoke,
    }
    write_record("splice", args.output, settings, results)
    return results


if __name__ == "__main__":
    main()
