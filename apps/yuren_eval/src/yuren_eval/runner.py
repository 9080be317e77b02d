"""The evaluation recipe: load the checkpoint once, run each benchmark, write its report."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from yuren_core.atomic import atomic_write_text
from yuren_core.vision import ImageProcessor

from .image_sets import evaluate_image_set
from .report import SubjectScore, write_text_report
from .subjects import subjects
from .tasks import BENCHMARKS, INVALID, LETTERS, task_configs, task_name
from .text_data import load_questions

METRICS = {"loglikelihood": "acc,none", "cot": "exact_match,choice"}


@dataclass(frozen=True)
class TextPlan:
    """One text benchmark's subjects, their questions loaded and checked, ready for lm-eval."""

    benchmark: str
    questions: dict  # subject -> DatasetDict


def subject_filter(requested: str | None, benchmark: str) -> list[str] | None:
    """The requested subjects that belong to ``benchmark`` (``None``: all of them)."""
    if not requested:
        return None
    names = [s.strip() for s in requested.split(",") if s.strip()]
    known = {s for b in BENCHMARKS.values() for s in subjects(b.categories)}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"--subjects: no benchmark has subjects {unknown}")
    return [s for s in names if s in subjects(BENCHMARKS[benchmark].categories)]


def plan_text_benchmarks(args: argparse.Namespace, benchmarks: list[str]) -> list[TextPlan]:
    """Every requested subject's questions, read and checked (a missing or broken file stops here, before the model)."""
    plans = []
    for benchmark in benchmarks:
        only = subject_filter(args.subjects, benchmark)
        if only == []:
            continue
        chosen = only or subjects(BENCHMARKS[benchmark].categories)
        data_dir = args.data_dir / benchmark if args.data_dir else None
        questions = load_questions(BENCHMARKS[benchmark], chosen, data_dir, args.num_fewshot)
        plans.append(TextPlan(benchmark, questions))
    if not plans:
        raise ValueError(f"--subjects {args.subjects} selects no subject of {', '.join(benchmarks)}")
    return plans


def run_text_benchmarks(args: argparse.Namespace, plans: list[TextPlan]):
    """Run the planned MMLU / C-Eval subjects through lm-eval; write each one's report. Returns ``(lm, reports)``."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from .lm import YuRenLM

    lm = YuRenLM(
        str(args.model),
        system_prompt=args.system_prompt,
        batch_size=args.batch_size,
        device=args.device,
        load_8bit=args.load_8bit,
        load_4bit=args.load_4bit,
    )
    configs = []
    for plan in plans:
        configs += task_configs(
            plan.benchmark, args.protocol, plan.questions, max_gen_toks=args.max_gen_toks, num_fewshot=args.num_fewshot
        )
    # The tasks are inline configs: lm-eval's index of its thousands of bundled task files is not needed.
    tasks = TaskManager(include_defaults=False)
    # The samples are always kept: unparsed answers are counted from them.
    output = lm_eval.simple_evaluate(model=lm, tasks=configs, task_manager=tasks, limit=args.limit, log_samples=True)
    reports = []
    for plan in plans:
        scores, logged = {}, []
        for subject in subjects(BENCHMARKS[plan.benchmark].categories):
            if subject not in plan.questions:
                continue
            name = task_name(plan.benchmark, subject)
            samples = [sample_record(subject, sample, args.protocol) for sample in output["samples"][name]]
            unparsed = sum(sample["extracted"] == INVALID for sample in samples)
            accuracy = output["results"][name][METRICS[args.protocol]]
            scores[subject] = SubjectScore(float(accuracy), int(output["n-samples"][name]["effective"]), unparsed)
            logged += samples
        settings = {
            "protocol": args.protocol,
            "num_fewshot": args.num_fewshot,
            "limit": args.limit,
            "system_prompt": args.system_prompt,
            "prompt_format": "chatml" if lm.chatml else "plain text",
        }
        reports.append(
            write_text_report(
                args.output_dir, plan.benchmark, scores, model_name=Path(args.model).name, settings=settings
            )
        )
        if args.log_samples:
            lines = "".join(json.dumps(sample, ensure_ascii=False) + "\n" for sample in logged)
            atomic_write_text(args.output_dir / f"{plan.benchmark}_samples.jsonl", lines)
    return lm, reports


def sample_record(subject: str, sample: dict, protocol: str) -> dict:
    """One of lm-eval's logged samples as the question asked, the answer given and the choice read from it."""
    correct = LETTERS[sample["doc"]["gold"]]
    if protocol == "loglikelihood":
        # One (log-likelihood, is-greedy) pair per letter: the answer is the likeliest letter.
        likelihoods = [float(pair[0]) for pair in sample["filtered_resps"]]
        answer = extracted = LETTERS[max(range(len(LETTERS)), key=likelihoods.__getitem__)]
    else:
        answer, extracted = sample["resps"][0][0], sample["filtered_resps"][0]
    return {
        "subject": subject,
        "doc_id": sample["doc_id"],
        "prompt": sample["arguments"][0][0],
        "answer": answer,
        "extracted": extracted,
        "correct": correct,
    }


def run_image_set(args: argparse.Namespace, benchmark: str, folder: Path, loaded):
    """Score one image set in ``folder`` (with ``--zero_image_features`` the control too); write ``NAME.json``, ``.md``.

    ``loaded`` is ``(model, tokenizer)`` if already loaded, else ``None``. Returns ``(loaded, report)``.
    """
    from yuren_core.loading import load_model

    if loaded is None:
        model, tokenizer, _ = load_model(
            args.model, load_8bit=args.load_8bit, load_4bit=args.load_4bit, device_map=args.device or _default_device()
        )
        loaded = (model, tokenizer)
    model, tokenizer = loaded
    processor = ImageProcessor.from_config(model.config)
    # The settings scored with are the ones reported.
    settings = _image_kwargs(args)
    report = {"benchmark": benchmark, "model": Path(args.model).name, **settings}
    report |= evaluate_image_set(model, tokenizer, processor, benchmark, folder, **settings)
    if args.zero_image_features:
        zeroed = evaluate_image_set(
            model, tokenizer, processor, benchmark, folder, zero_image_features=True, **settings
        )
        report["zeroed_image_features"] = {k: v for k, v in zeroed.items() if k != "answers"}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output_dir / f"{benchmark}.json", json.dumps(report, ensure_ascii=False, indent=2))
    atomic_write_text(args.output_dir / f"{benchmark}.md", image_markdown(report))
    return loaded, report


def image_set_folder(args: argparse.Namespace, benchmark: str) -> Path:
    """``--data_dir``'s copy of ``benchmark``, or without ``--data_dir`` the hub's, converted to the same layout."""
    if args.data_dir is not None:
        return args.data_dir / benchmark
    from .hub import hub_copy

    return hub_copy(benchmark, args.cache_dir)


def _image_kwargs(args: argparse.Namespace) -> dict:
    return {"limit": args.limit, "batch_size": args.image_batch_size, "system_prompt": args.system_prompt}


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def image_markdown(report: dict) -> str:
    """One benchmark's scores as a markdown table: accuracy (and MME's score), with the control beside."""
    columns = ["accuracy (%)"] + (["MME score"] if "score" in report else [])
    rows = [("images", report)]
    if "zeroed_image_features" in report:
        rows.append(("image features zeroed", report["zeroed_image_features"]))
    lines = [
        f"## {report['benchmark']} ({report['n']} questions)\n",
        f"| | {' | '.join(columns)} |",
        f"|---|{'---|' * len(columns)}",
    ]
    for label, scores in rows:
        cells = [f"{100 * scores['accuracy']:.2f}"] + ([f"{scores['score']:.2f}"] if "score" in report else [])
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
