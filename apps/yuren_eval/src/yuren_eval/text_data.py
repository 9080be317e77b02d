"""MMLU's and C-Eval's questions, read and checked in full before any model is loaded.

A subject's questions come from the hub (``cais/mmlu``, ``ceval/ceval-exam``)
or from the benchmark's own CSV release under a data directory. Either way
each question is normalised to ``question``, ``choices`` (4) and ``gold`` (the
right choice's index), and a question that cannot be is reported with its file
and line (or hub row), so a broken file stops the run before the model is
loaded rather than somewhere inside lm-eval.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from datasets import Dataset, DatasetDict

from .tasks import LETTERS, Benchmark

# The columns a question needs in either layout (C-Eval's CSVs also have ``id``, its dev files ``explanation``).
COLUMNS = ("question", "A", "B", "C", "D", "answer")
# Missing files named in the message before it says how many more there are.
NAMED_MISSING = 8


class DataError(ValueError):
    """A benchmark's data cannot be read as questions; the message names the file (and line) and what to do."""


def normalise(doc: Mapping, where: str) -> dict:
    """One question in any supported layout -> ``question``, ``choices`` (4), ``gold`` (index).

    ``cais/mmlu`` stores ``choices`` and an integer ``answer``; MMLU's CSVs and
    C-Eval (hub and CSV) store columns ``A``-``D`` and the answer's letter.
    ``where`` names the question in an error (file and line, or hub row).
    """
    if "choices" in doc:
        choices, gold = list(doc["choices"]), doc["answer"]
        if len(choices) != len(LETTERS) or not isinstance(gold, int) or not 0 <= gold < len(LETTERS):
            raise DataError(f"{where}: expected 4 choices and an answer index 0-3, got {choices!r} and {gold!r}")
    else:
        missing = [column for column in COLUMNS if doc.get(column) is None]
        if missing:
            raise DataError(f"{where}: no value for {', '.join(missing)}")
        answer = str(doc["answer"]).strip()
        if answer not in LETTERS:
            raise DataError(f"{where}: answer {answer!r} is not one of {', '.join(LETTERS)}")
        choices, gold = [doc[letter] for letter in LETTERS], LETTERS.index(answer)
    return {"question": str(doc["question"]).strip(), "choices": [str(c).strip() for c in choices], "gold": gold}


def release_files(benchmark: Benchmark, subject: str, data_dir: Path, num_fewshot: int) -> dict[str, Path]:
    """Split -> the release's file of ``subject`` under ``data_dir`` (the dev split only for few-shot)."""
    files = {benchmark.split: data_dir / benchmark.local_file.format(subject=subject)}
    if num_fewshot:
        files["dev"] = data_dir / benchmark.local_dev_file.format(subject=subject)
    return files


def read_release_csv(benchmark: Benchmark, path: Path) -> list[dict]:
    """The normalised questions of one of the release's CSV files; an unreadable row is named by its line."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            columns = benchmark.local_columns
            if columns is None:
                columns = next(reader, None)
                if columns is None:
                    raise DataError(f"{path} is empty: {empty_fix(benchmark)}")
                absent = [column for column in COLUMNS if column not in columns]
                if absent:
                    raise DataError(
                        f"{path}, line 1: the header has no column {', '.join(absent)}; {benchmark.name}'s CSVs "
                        f"start with the header {','.join(('id',) + COLUMNS)}"
                    )
            layout = ",".join(columns)
            questions, line = [], reader.line_num + 1
            for fields in reader:
                if fields:
                    if len(fields) != len(columns):
                        raise DataError(
                            f"{path}, line {line}: {len(fields)} fields where {benchmark.name}'s rows have "
                            f"{len(columns)} ({layout}); a field holding a comma or a line break must be quoted"
                        )
                    questions.append(normalise(dict(zip(columns, fields, strict=True)), f"{path}, line {line}"))
                line = reader.line_num + 1
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a UTF-8 CSV file ({error})") from error
    if not questions:
        raise DataError(f"{path} has no questions: {empty_fix(benchmark)}")
    return questions


def empty_fix(benchmark: Benchmark) -> str:
    """What to do about an empty subject file."""
    return f"copy the subject's file from {benchmark.name}'s release, or leave the subject out with --subjects"


def hub_subject(benchmark: Benchmark, subject: str, num_fewshot: int) -> dict[str, list[dict]]:
    """Split -> the normalised questions of ``subject`` from the hub (the dev split only for few-shot)."""
    import datasets

    try:
        hub = datasets.load_dataset(benchmark.hub_path, subject)
    except (OSError, datasets.exceptions.DatasetsError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"cannot read {benchmark.name} subject {subject} from the hub ({benchmark.hub_path}): the hub is "
            f"unreachable or refused ({first_line}); without the hub, pass --data_dir DIR with {benchmark.name}'s "
            f"own release in DIR/{benchmark.name}/{benchmark.local_file.format(subject='SUBJECT')}"
        ) from error
    splits = [benchmark.split] + (["dev"] if num_fewshot else [])
    return {
        split: [
            normalise(row, f"{benchmark.hub_path} {subject} {split} row {number}")
            for number, row in enumerate(hub[split])
        ]
        for split in splits
    }


def load_questions(
    benchmark: Benchmark, subjects: list[str], data_dir: Path | None, num_fewshot: int = 0
) -> dict[str, DatasetDict]:
    """Subject -> its questions (the evaluated split, and ``dev`` for few-shot), every file checked first.

    With ``data_dir`` every file is looked for before any is read, and the
    missing ones are named together.
    """
    if data_dir is not None:
        missing = [
            path
            for subject in subjects
            for path in release_files(benchmark, subject, data_dir, num_fewshot).values()
            if not path.is_file()
        ]
        if missing:
            named = ", ".join(str(path.relative_to(data_dir)) for path in missing[:NAMED_MISSING])
            more = f" and {len(missing) - NAMED_MISSING} more" if len(missing) > NAMED_MISSING else ""
            raise DataError(
                f"{len(missing)} of {benchmark.name}'s files are missing from {data_dir}: {named}{more}. "
                f"--subjects NAME,... evaluates only the subjects you have; {data_dir} holds {benchmark.name}'s "
                f"own release ({benchmark.local_file.format(subject='SUBJECT')}"
                + (f", {benchmark.local_dev_file.format(subject='SUBJECT')} for few-shot" if num_fewshot else "")
                + ")"
            )
    loaded = {}
    for subject in subjects:
        if data_dir is None:
            splits = hub_subject(benchmark, subject, num_fewshot)
        else:
            files = release_files(benchmark, subject, data_dir, num_fewshot)
            splits = {split: read_release_csv(benchmark, path) for split, path in files.items()}
        if num_fewshot and len(splits["dev"]) < num_fewshot:
            raise DataError(
                f"{benchmark.name} {subject}: --num_fewshot {num_fewshot} but its dev split has only "
                f"{len(splits['dev'])} questions"
            )
        loaded[subject] = DatasetDict({split: Dataset.from_list(questions) for split, questions in splits.items()})
    return loaded
