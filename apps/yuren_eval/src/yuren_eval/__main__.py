"""evaluate: score a YuRen checkpoint on MMLU, C-Eval and image benchmarks, in the seed's table layout.

MMLU and C-Eval run through lm-evaluation-harness (model ``yuren``, prompts in
the checkpoint's ChatML layout), zero-shot (or --num_fewshot from the dev
split), by log-likelihood or by chain of thought (the seed's protocol); a
LLaMA text checkpoint (a prepared base, a stage-1 model) runs them too. Image sets (POPE, MME, ScienceQA-IMG) are read
in their own releases' layout: from --data_dir, or without it downloaded from
the hub (lmms-lab/POPE, lmms-lab/MME, derek-thomas/ScienceQA) and converted
to that layout once. Each benchmark writes
``NAME.json`` and ``NAME.md`` (and for MMLU / C-Eval a per-subject ``NAME.png``)
to --output_dir; with --log_samples also ``NAME_samples.jsonl``, one line
per question (prompt, answer, the choice read from it, the correct choice).
All data is found and checked before the model is loaded.

examples:
  evaluate dist/yuren-7b --tasks mmlu,ceval --protocol cot
  evaluate dist/yuren-7b --tasks mmlu --limit 5 --log_samples    # a quick look, every answer kept
  evaluate dist/yuren-7b --tasks ceval --protocol loglikelihood --num_fewshot 5
  evaluate dist/yuren-7b --tasks pope,mme,scienceqa --zero_image_features     # image sets from the hub
  evaluate dist/yuren-7b --tasks mmlu,ceval,pope --data_dir /data/benchmarks   # offline
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from huggingface_hub.constants import HF_HOME

from yuren_core.cli import fail

from .image_sets import IMAGE_SETS, ImageSetError
from .tasks import BENCHMARKS, PROTOCOLS

TEXT_SETS = tuple(BENCHMARKS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )  # fmt: skip
    parser.add_argument("model", help="a saved YuRen checkpoint directory")
    parser.add_argument(
        "--tasks", default="mmlu,ceval", help=f"comma-separated, from {', '.join(TEXT_SETS + IMAGE_SETS)}"
    )
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="cot",
        help="MMLU / C-Eval: chain-of-thought generation with answer extraction (the seed's) or log-likelihood",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="at most this many questions per subject / image set")
    parser.add_argument("--subjects", default=None, help="MMLU / C-Eval: only these subjects (comma-separated)")
    parser.add_argument(
        "--num_fewshot", type=int, default=0,
        help="MMLU / C-Eval: answered examples from the subject's dev split before each question (default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--log_samples", action="store_true",
        help="MMLU / C-Eval: also write NAME_samples.jsonl (prompt, answer, extracted and correct choice)",
    )  # fmt: skip
    parser.add_argument(
        "--data_dir", type=Path, default=None,
        help="local copies, one folder per task in the dataset's own format (mmlu/, ceval/, pope/, mme/, scienceqa/); "
        "without it every set comes from the hub",
    )  # fmt: skip
    parser.add_argument(
        "--cache_dir", type=Path, default=Path(HF_HOME) / "yuren-eval",
        help="image sets from the hub: where their converted copies are kept (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--output_dir", type=Path, default=Path("eval-results"))
    parser.add_argument("--batch_size", default="1", help="lm-eval batch size (a number or 'auto')")
    parser.add_argument("--image_batch_size", type=int, default=16)
    parser.add_argument("--max_gen_toks", type=int, default=512, help="chain-of-thought: most tokens generated")
    parser.add_argument("--system_prompt", default=None, help="a system turn before every question (default: none)")
    parser.add_argument(
        "--zero_image_features", action="store_true", help="image sets: also score with the image features zeroed"
    )
    parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if present)")
    quantize = parser.add_mutually_exclusive_group()
    quantize.add_argument("--load_8bit", action="store_true")
    quantize.add_argument("--load_4bit", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``uv run evaluate``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TEXT_SETS + IMAGE_SETS]
    if unknown or not tasks:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(TEXT_SETS + IMAGE_SETS)}")
    if not Path(args.model, "config.json").is_file():
        parser.error(f"{args.model}/config.json not found: MODEL must be a saved YuRen checkpoint directory")
    if args.num_fewshot < 0:
        parser.error(f"--num_fewshot must be 0 or more, got {args.num_fewshot}")

    from .lm import TEXT_ONLY, checkpoint_kind
    from .runner import image_set_folder, plan_text_benchmarks, run_image_set, run_text_benchmarks

    text = [t for t in tasks if t in TEXT_SETS]
    images = [t for t in tasks if t in IMAGE_SETS]
    try:
        if images and checkpoint_kind(str(args.model)) == TEXT_ONLY:
            fail(
                "evaluate",
                f"{args.model} is a LLaMA text checkpoint (model_type 'llama'): it has no vision tower for "
                f"{', '.join(images)}; evaluate it on {', '.join(TEXT_SETS)}, or a YuRen checkpoint on image sets",
            )
        # All data is found (or downloaded) and checked first: a missing file stops the run before the model loads.
        plans = plan_text_benchmarks(args, text) if text else []
        folders = {name: image_set_folder(args, name) for name in images}
        model = None
        if plans:
            lm, reports = run_text_benchmarks(args, plans)
            model = (lm.model, lm.tokenizer)
            for report in reports:
                print(Path(args.output_dir, f"{report['benchmark']}.md").read_text(encoding="utf-8"))
        for name, folder in folders.items():
            model, report = run_image_set(args, name, folder, model)
            print(json.dumps({k: v for k, v in report.items() if k != "answers"}, ensure_ascii=False, indent=2))
    except (ImageSetError, FileNotFoundError, ValueError) as error:
        fail("evaluate", str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
