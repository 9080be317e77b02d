"""MMLU and C-Eval as lm-eval task configs, one task per subject, for either protocol.

Two protocols (``--protocol``):

* ``loglikelihood``: zero-shot multiple choice; the model's choice is the
  letter it gives the highest log-likelihood as its answer (lm-eval's ``acc``).
* ``cot``: zero-shot chain of thought, the seed's protocol: the model reasons,
  then states its answer; :class:`ChoiceExtractor` reads the letter out of
  the generated text and lm-eval's ``exact_match`` scores it.

Data comes from the hub (``cais/mmlu``, ``ceval/ceval-exam``) or, with a
data directory, from each benchmark's own CSV release: MMLU's ``data.tar``
(``test/{subject}_test.csv``, no header) and C-Eval's ``ceval-exam.zip``
(``val/{subject}_val.csv``, with header). C-Eval's test answers are not
public, so C-Eval is scored on its validation split.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lm_eval.api.filter import Filter
from lm_eval.api.registry import register_filter

from .subjects import CEVAL_CATEGORIES, MMLU_CATEGORIES, subjects

LETTERS = ("A", "B", "C", "D")
PROTOCOLS = ("loglikelihood", "cot")
INVALID = "[invalid]"


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark's data is and how its questions are asked."""

    name: str
    categories: dict[str, tuple[str, ...]]
    hub_path: str
    split: str
    # Local release: file of a subject relative to the data directory, and its columns when it has no header.
    local_file: str
    local_columns: tuple[str, ...] | None
    instruction: str
    answer_cue: str
    cot_instruction: str


MMLU = Benchmark(
    name="mmlu",
    categories=MMLU_CATEGORIES,
    hub_path="cais/mmlu",
    split="test",
    local_file="test/{subject}_test.csv",
    local_columns=("question", "A", "B", "C", "D", "answer"),
    instruction="The following is a multiple choice question about {topic}.",
    answer_cue="Answer:",
    cot_instruction=(
        "Think it through step by step, then give your final answer on the last line as "
        '"Answer: X", where X is one of A, B, C, D.'
    ),
)
CEVAL = Benchmark(
    name="ceval",
    categories=CEVAL_CATEGORIES,
    hub_path="ceval/ceval-exam",
    split="val",
    local_file="val/{subject}_val.csv",
    local_columns=None,
    instruction="以下是关于{topic}的单项选择题，请选出其中的正确答案。",
    answer_cue="答案：",
    cot_instruction="请一步一步地分析，最后一行以“答案：X”的格式给出你的答案，X 为 A、B、C、D 之一。",
)
BENCHMARKS = {benchmark.name: benchmark for benchmark in (MMLU, CEVAL)}


def task_name(benchmark: str, subject: str) -> str:
    """The lm-eval task name of one subject."""
    return f"yuren_{benchmark}_{subject}"


def normalise(doc: dict) -> dict:
    """One question in any of the supported layouts -> ``question``, ``choices`` (4), ``gold`` (index).

    ``cais/mmlu`` stores ``choices`` and an integer ``answer``; MMLU's CSVs and
    C-Eval (hub and CSV) store columns ``A``-``D`` and the answer's letter.
    """
    if "choices" in doc:
        choices, gold = list(doc["choices"]), int(doc["answer"])
    else:
        choices = [doc[letter] for letter in LETTERS]
        answer = str(doc["answer"]).strip()
        if answer not in LETTERS:
            raise ValueError(f"question {doc.get('id', doc['question'][:40])!r}: answer {answer!r} is not one of A-D")
        gold = LETTERS.index(answer)
    return {"question": str(doc["question"]).strip(), "choices": [str(c).strip() for c in choices], "gold": gold}


def question_text(doc: dict) -> str:
    """The question and its lettered choices."""
    lines = [doc["question"], *(f"{letter}. {choice}" for letter, choice in zip(LETTERS, doc["choices"], strict=True))]
    return "\n".join(lines)


def prompt_builder(benchmark: Benchmark, subject: str, protocol: str) -> Callable[[dict], str]:
    """``doc -> prompt``: the user turn the model is asked (rendered as ChatML by the model)."""
    head = benchmark.instruction.format(topic=subject.replace("_", " "))
    tail = benchmark.answer_cue if protocol == "loglikelihood" else benchmark.cot_instruction
    return lambda doc: f"{head}\n\n{question_text(doc)}\n{tail}"


def data_source(benchmark: Benchmark, subject: str, data_dir: Path | None) -> dict:
    """The lm-eval dataset fields of one subject: the hub config, or the local release's CSV file."""
    if data_dir is None:
        return {"dataset_path": benchmark.hub_path, "dataset_name": subject}
    path = Path(data_dir) / benchmark.local_file.format(subject=subject)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {data_dir} must hold {benchmark.name}'s own release, one file per subject "
            f"({benchmark.local_file.format(subject='SUBJECT')}), or leave out --data_dir to read it from the hub"
        )
    kwargs: dict = {"data_files": {benchmark.split: str(path)}}
    if benchmark.local_columns:
        kwargs["column_names"] = list(benchmark.local_columns)
    return {"dataset_path": "csv", "dataset_kwargs": kwargs}


def task_configs(
    benchmark_name: str,
    protocol: str,
    *,
    data_dir: Path | None = None,
    only: list[str] | None = None,
    max_gen_toks: int = 512,
) -> list[dict]:
    """lm-eval task configs for every subject of ``benchmark_name`` (or the subjects in ``only``)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    benchmark = BENCHMARKS[benchmark_name]
    chosen = subjects(benchmark.categories)
    if only:
        unknown = sorted(set(only) - set(chosen))
        if unknown:
            raise ValueError(f"{benchmark_name} has no subjects {unknown}; its subjects: {', '.join(chosen)}")
        chosen = [subject for subject in chosen if subject in only]
    configs = []
    for subject in chosen:
        config = {
            "task": task_name(benchmark.name, subject),
            **data_source(benchmark, subject, data_dir),
            "test_split": benchmark.split,
            "process_docs": lambda dataset: dataset.map(normalise),
            "doc_to_text": prompt_builder(benchmark, subject, protocol),
        }
        if protocol == "loglikelihood":
            config |= {
                "output_type": "multiple_choice",
                "doc_to_choice": list(LETTERS),
                "doc_to_target": lambda doc: doc["gold"],
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            }
        else:
            config |= {
                "output_type": "generate_until",
                "doc_to_target": lambda doc: LETTERS[doc["gold"]],
                "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": max_gen_toks},
                "filter_list": [
                    {"name": "choice", "filter": [{"function": "yuren_choice"}, {"function": "take_first"}]}
                ],
                "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
            }
        configs.append(config)
    return configs


# The answer the model states ("Answer: B", "答案：B", "answer is (B)"), or failing that its last lone letter.
STATED_ANSWER = re.compile(r"(?:[Aa]nswer|答案)\s*(?:is|是|为)?\s*[:：]?\s*\(?([ABCD])(?![A-Za-z])")
LONE_LETTER = re.compile(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])")


def extract_choice(text: str) -> str:
    """The letter a chain-of-thought answer chose, or ``[invalid]`` when it names none."""
    stated = STATED_ANSWER.findall(text)
    if stated:
        return stated[-1]
    lone = LONE_LETTER.findall(text)
    return lone[-1] if lone else INVALID


@register_filter("yuren_choice")
class ChoiceExtractor(Filter):
    """lm-eval filter: each generated answer -> the letter it chose (:func:`extract_choice`)."""

    def apply(self, resps, docs):
        return [[extract_choice(text) for text in answers] for answers in resps]
