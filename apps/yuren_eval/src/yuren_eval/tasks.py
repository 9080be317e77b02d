"""MMLU and C-Eval as lm-eval task configs, one task per subject, for either protocol.

Two protocols (``--protocol``):

* ``loglikelihood``: multiple choice; the model's choice is the
  letter it gives the highest log-likelihood as its answer (lm-eval's ``acc``).
* ``cot``: chain of thought, the seed's protocol (zero-shot): the model reasons,
  then states its answer; :class:`ChoiceExtractor` reads the letter out of
  the generated text and lm-eval's ``exact_match`` scores it.

With ``num_fewshot`` the first questions of the subject's dev split (the
answered examples the benchmarks ship for this, lm-eval's convention) come
before the question, each answered with its letter after the answer cue.

The questions themselves are read and checked by :mod:`yuren_eval.text_data`
(hub or the benchmarks' own CSV releases); the configs here take them as
loaded. C-Eval's test answers are not public, so C-Eval is scored on its
validation split.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lm_eval.api.filter import Filter
from lm_eval.api.registry import register_filter

from .subjects import CEVAL_CATEGORIES, CEVAL_NAMES, MMLU_CATEGORIES, subjects

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
    # Local release: files of a subject relative to the data directory, and their columns when they have no header.
    local_file: str
    local_dev_file: str
    local_columns: tuple[str, ...] | None
    # The instruction naming the subject: {topic} is its entry in ``topics``, or its name with spaces.
    instruction: str
    topics: Mapping[str, str] | None
    answer_cue: str
    cot_instruction: str
    # Between a few-shot example's answer cue and its letter.
    target_delimiter: str


MMLU = Benchmark(
    name="mmlu",
    categories=MMLU_CATEGORIES,
    hub_path="cais/mmlu",
    split="test",
    local_file="test/{subject}_test.csv",
    local_dev_file="dev/{subject}_dev.csv",
    local_columns=("question", "A", "B", "C", "D", "answer"),
    instruction="The following is a multiple choice question about {topic}.",
    topics=None,
    answer_cue="Answer:",
    cot_instruction=(
        "Think it through step by step, then give your final answer on the last line as "
        '"Answer: X", where X is one of A, B, C, D.'
    ),
    target_delimiter=" ",
)
CEVAL = Benchmark(
    name="ceval",
    categories=CEVAL_CATEGORIES,
    hub_path="ceval/ceval-exam",
    split="val",
    local_file="val/{subject}_val.csv",
    local_dev_file="dev/{subject}_dev.csv",
    local_columns=None,
    # C-Eval's own prompt, with the subject's Chinese name.
    instruction="以下是中国关于{topic}的单项选择题，请选出其中的正确答案。",
    topics=CEVAL_NAMES,
    answer_cue="答案：",
    cot_instruction="请一步一步地分析，最后一行以“答案：X”的格式给出你的答案，X 为 A、B、C、D 之一。",
    target_delimiter="",
)
BENCHMARKS = {benchmark.name: benchmark for benchmark in (MMLU, CEVAL)}


def task_name(benchmark: str, subject: str) -> str:
    """The lm-eval task name of one subject."""
    return f"yuren_{benchmark}_{subject}"


def question_text(doc: dict) -> str:
    """The question and its lettered choices."""
    lines = [doc["question"], *(f"{letter}. {choice}" for letter, choice in zip(LETTERS, doc["choices"], strict=True))]
    return "\n".join(lines)


def instruction(benchmark: Benchmark, subject: str) -> str:
    """The sentence opening every prompt of ``subject``, naming it as the benchmark's own prompts do."""
    topic = benchmark.topics[subject] if benchmark.topics else subject.replace("_", " ")
    return benchmark.instruction.format(topic=topic)


def question_prompt(benchmark: Benchmark, protocol: str) -> Callable[[dict], str]:
    """``doc -> text``: the question, its choices and what the protocol asks for (the answer cue or the CoT request)."""
    tail = benchmark.answer_cue if protocol == "loglikelihood" else benchmark.cot_instruction
    return lambda doc: f"{question_text(doc)}\n{tail}"


def prompt_builder(benchmark: Benchmark, subject: str, protocol: str) -> Callable[[dict], str]:
    """``doc -> prompt``: the zero-shot user turn the model is asked (rendered as ChatML by the model)."""
    head, ask = instruction(benchmark, subject), question_prompt(benchmark, protocol)
    return lambda doc: f"{head}\n\n{ask(doc)}"


def task_configs(
    benchmark_name: str,
    protocol: str,
    questions: Mapping,
    *,
    max_gen_toks: int = 512,
    num_fewshot: int = 0,
) -> list[dict]:
    """lm-eval task configs, one per subject of ``questions`` (subject -> its loaded ``DatasetDict``).

    The prompt is the instruction, then (with ``num_fewshot``) that many dev
    questions each answered with its letter, then the question.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    benchmark = BENCHMARKS[benchmark_name]
    configs = []
    for subject in subjects(benchmark.categories):
        if subject not in questions:
            continue
        config = {
            "task": task_name(benchmark.name, subject),
            # Bound now: the loop variable would be read when lm-eval calls it.
            "custom_dataset": lambda data=questions[subject], **_: data,
            "test_split": benchmark.split,
            "description": f"{instruction(benchmark, subject)}\n\n",
            "doc_to_text": question_prompt(benchmark, protocol),
            "num_fewshot": num_fewshot,
        }
        if num_fewshot:
            config |= {
                "fewshot_split": "dev",
                "fewshot_delimiter": "\n\n",
                "fewshot_config": {
                    "sampler": "first_n",
                    "doc_to_text": question_prompt(benchmark, "loglikelihood"),
                    "doc_to_target": lambda doc: LETTERS[doc["gold"]],
                    "target_delimiter": benchmark.target_delimiter,
                },
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
