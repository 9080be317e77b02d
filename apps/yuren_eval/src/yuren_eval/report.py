"""Per-subject accuracies -> the seed's tables (JSON and markdown) and a per-subject plot.

Averages follow the seed's tables: a category's score is the mean of its
subjects' accuracies. MMLU's Average is the mean of its four categories (the
seed's 44.24 is exactly that of its four numbers); C-Eval's Average and
Avg(Hard) are means over all subjects and over the hard subjects, as C-Eval
defines them. Scores are percentages with two decimals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from yuren_core.atomic import atomic_write_text

from .subjects import CEVAL_CATEGORIES, CEVAL_HARD, MMLU_CATEGORIES, category_of, subjects

MMLU_COLUMNS = ("Humanities", "Social Sciences", "STEM", "Other", "Average")
CEVAL_COLUMNS = ("Average", "Avg(Hard)", "STEM", "Social Sciences", "Humanities", "Others")
COLUMNS = {"mmlu": MMLU_COLUMNS, "ceval": CEVAL_COLUMNS}
# The seed's published scores (OpenCompass 20230706, zero-shot chain of thought), for comparison.
SEED_SCORES = {
    "mmlu": dict(zip(MMLU_COLUMNS, (41.77, 53.97, 39.90, 41.33, 44.24), strict=True)),
    "ceval": dict(zip(CEVAL_COLUMNS, (44.97, 31.7, 47.04, 52.0, 43.08, 45.31), strict=True)),
}
TITLES = {"mmlu": "MMLU", "ceval": "C-Eval"}


@dataclass(frozen=True)
class SubjectScore:
    """One subject's accuracy over ``n`` questions, of which ``unparsed`` answers named no choice (chain of thought)."""

    accuracy: float
    n: int
    unparsed: int = 0


def table_row(benchmark: str, scores: dict[str, SubjectScore]) -> dict[str, float]:
    """The seed's table columns for ``benchmark`` (percentages); columns whose subjects were not run are left out."""
    categories = MMLU_CATEGORIES if benchmark == "mmlu" else CEVAL_CATEGORIES
    by_category: dict[str, list[float]] = {}
    for subject, category in category_of(categories).items():
        if subject in scores:
            by_category.setdefault(category, []).append(scores[subject].accuracy)
    row = {category: 100 * mean(values) for category, values in by_category.items()}
    if benchmark == "mmlu":
        if len(row) == len(categories):
            row["Average"] = mean(row.values())
    else:
        row["Average"] = 100 * mean(score.accuracy for score in scores.values())
        hard = [scores[subject].accuracy for subject in CEVAL_HARD if subject in scores]
        if hard:
            row["Avg(Hard)"] = 100 * mean(hard)
    return {column: round(row[column], 2) for column in COLUMNS[benchmark] if column in row}


def markdown_table(benchmark: str, row: dict[str, float], model_name: str) -> str:
    """The row beside the seed's, in the seed's column order."""
    columns = COLUMNS[benchmark]
    lines = [
        f"| Model | {' | '.join(columns)} |",
        f"|---|{'---|' * len(columns)}",
        f"| {model_name} | {' | '.join(f'{row[c]:.2f}' if c in row else '-' for c in columns)} |",
        f"| seed (羽人-baichuan-7b) | {' | '.join(f'{SEED_SCORES[benchmark][c]:.2f}' for c in columns)} |",
    ]
    return "\n".join(lines)


def run_summary(benchmark: str, scores: dict[str, SubjectScore], settings: dict) -> str:
    """What was run, in words: protocol, shots, subjects out of all, the question limit, unparsed answers."""
    categories = MMLU_CATEGORIES if benchmark == "mmlu" else CEVAL_CATEGORIES
    shots = settings.get("num_fewshot") or 0
    parts = [
        settings.get("protocol", ""),
        f"{shots}-shot" if shots else "zero-shot",
        f"{len(scores)}/{len(subjects(categories))} subjects",
        f"limit {settings['limit']} per subject" if settings.get("limit") else "all questions",
        f"{sum(s.n for s in scores.values())} questions",
    ]
    if settings.get("protocol") == "cot":
        parts.append(f"{sum(s.unparsed for s in scores.values())} answers unparsed (no choice read, scored wrong)")
    if settings.get("prompt_format"):
        parts.append(f"{settings['prompt_format']} prompts")
    return ", ".join(part for part in parts if part)


def subject_table(scores: dict[str, SubjectScore], protocol: str | None) -> str:
    """A row per subject: questions, accuracy and (chain of thought) how many answers named no choice."""
    unparsed = protocol == "cot"
    lines = [
        "| Subject | Questions | Accuracy (%) |" + (" Unparsed |" if unparsed else ""),
        "|---|---|---|" + ("---|" if unparsed else ""),
    ]
    for subject, score in sorted(scores.items()):
        row = f"| {subject} | {score.n} | {100 * score.accuracy:.2f} |"
        lines.append(row + (f" {score.unparsed} |" if unparsed else ""))
    return "\n".join(lines)


def plot_subjects(benchmark: str, scores: dict[str, SubjectScore], path: Path) -> None:
    """:func:`subject_figure` written as PNG to ``path``."""
    from matplotlib import pyplot

    figure = subject_figure(benchmark, scores)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    pyplot.close(figure)


def subject_figure(benchmark: str, scores: dict[str, SubjectScore]):
    """A bar per subject, grouped and coloured by category, its value at its end (a matplotlib figure).

    Each label carries the subject's question count; the legend sits below
    the axes, where it covers no bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    categories = MMLU_CATEGORIES if benchmark == "mmlu" else CEVAL_CATEGORIES
    category = category_of(categories)
    ordered = sorted(scores, key=lambda s: (list(categories).index(category[s]), s))
    colours = dict(zip(categories, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=True))
    values = [100 * scores[s].accuracy for s in ordered]
    figure, axes = pyplot.subplots(figsize=(8, 0.22 * len(ordered) + 1.8))
    axes.barh(range(len(ordered)), values, color=[colours[category[s]] for s in ordered])
    # The value beside every bar, and a marker on the axis for a 0% subject, whose bar has no length to see.
    for row, (subject, value) in enumerate(zip(ordered, values, strict=True)):
        axes.text(value + 0.8, row, f"{value:.1f}", va="center", fontsize=6)
        if value == 0:
            axes.plot(0, row, marker="D", markersize=4, color=colours[category[subject]], clip_on=False)
    labels = [f"{s.replace('_', ' ')} ({scores[s].n})" for s in ordered]
    axes.set_yticks(range(len(ordered)), labels, fontsize=7)
    axes.set_ylim(len(ordered) - 0.5, -0.5)
    axes.set_xlim(0, 100)
    axes.axvline(25, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("accuracy (%); dotted: chance; (n): questions")
    axes.set_title(f"{TITLES[benchmark]} per subject")
    handles = [matplotlib.patches.Patch(color=colour, label=name) for name, colour in colours.items()]
    axes.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.6 / figure.get_figheight() - 0.02),
                ncol=len(handles), fontsize=7, frameon=False)  # fmt: skip
    return figure


def write_text_report(
    output_dir: Path, benchmark: str, scores: dict[str, SubjectScore], *, model_name: str, settings: dict
) -> dict:
    """Write ``{benchmark}.json``, ``{benchmark}.md`` and ``{benchmark}.png`` to ``output_dir``; return the JSON."""
    output_dir.mkdir(parents=True, exist_ok=True)
    row = table_row(benchmark, scores)
    report = {
        "benchmark": benchmark,
        "model": model_name,
        **settings,
        "run": run_summary(benchmark, scores, settings),
        "table": row,
        "seed": SEED_SCORES[benchmark],
        "subjects": {
            subject: {"accuracy": s.accuracy, "n": s.n, "unparsed": s.unparsed} for subject, s in sorted(scores.items())
        },
    }
    atomic_write_text(output_dir / f"{benchmark}.json", json.dumps(report, ensure_ascii=False, indent=2))
    markdown = (
        f"## {TITLES[benchmark]}\n\n{report['run']}\n\n{markdown_table(benchmark, row, model_name)}\n\n"
        f"{subject_table(scores, settings.get('protocol'))}\n"
    )
    atomic_write_text(output_dir / f"{benchmark}.md", markdown)
    plot_subjects(benchmark, scores, output_dir / f"{benchmark}.png")
    return report
