"""`evaluate` checks MMLU / C-Eval data before loading the model: a broken file is one line naming file and line."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

import yuren_eval.lm
from yuren_eval.__main__ import main

CEVAL_HEADER = ["id", "question", "A", "B", "C", "D", "answer"]


def write_csv(path: Path, rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Every test here must stop before the model: loading it fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(yuren_eval.lm, "load_text_model", refuse)


def fails_with(argv: list[str], capsys) -> str:
    """Run evaluate expecting exit status 2; return its one-line error."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("evaluate: error: ") and "\n" not in error and "Traceback" not in error
    return error


GOOD_MMLU_ROWS = [
    ["What is one plus one?", "1", "2", "3", "4", "B"],
    ["Which is red?", "sky", "rose", "grass", "snow", "B"],
]


@pytest.mark.parametrize(
    ("benchmark", "subject", "rows", "message"),
    [
        # A C-Eval header without one of the choices.
        ("ceval", "law", [["id", "question", "A", "B", "C", "answer"], [0, "Q", "a", "b", "c", "A"]],
         r"val/law_val\.csv, line 1: the header has no column D; ceval's CSVs start with the header "
         r"id,question,A,B,C,D,answer"),
        # A row that lost a field (an unquoted comma the other way round, or a missing choice).
        ("mmlu", "anatomy", [GOOD_MMLU_ROWS[0], ["Q", "a", "b", "c", "A"]],
         r"test/anatomy_test\.csv, line 2: 5 fields where mmlu's rows have 6 \(question,A,B,C,D,answer\)"),
        # An answer that is not a choice.
        ("ceval", "law", [CEVAL_HEADER, [0, "Q", "a", "b", "c", "d", "A"], [1, "Q", "a", "b", "c", "d", "E"]],
         r"val/law_val\.csv, line 3: answer 'E' is not one of A, B, C, D"),
        # A file with no questions, with and without a header.
        ("mmlu", "anatomy", [], r"test/anatomy_test\.csv has no questions: copy the subject's file from mmlu's "
         r"release, or leave the subject out with --subjects"),
        ("ceval", "law", [], r"val/law_val\.csv is empty"),
        ("ceval", "law", [CEVAL_HEADER], r"val/law_val\.csv has no questions"),
    ],
)  # fmt: skip
def test_broken_release_files_are_named_by_file_and_line(
    benchmark, subject, rows, message, fused_model_dir, tmp_path, capsys, no_model_load
):
    from yuren_eval.tasks import BENCHMARKS

    write_csv(tmp_path / benchmark / BENCHMARKS[benchmark].local_file.format(subject=subject), rows)
    error = fails_with(
        [str(fused_model_dir), "--tasks", benchmark, "--data_dir", str(tmp_path), "--subjects", subject], capsys
    )
    assert str(tmp_path) in error
    assert re.search(message, error), error


def test_every_missing_file_is_listed_before_the_model_loads(fused_model_dir, tmp_path, capsys, no_model_load):
    # A partial copy: 2 of MMLU's 57 subjects, and no dev files for few-shot.
    for subject in ("anatomy", "virology"):
        write_csv(tmp_path / "mmlu" / "test" / f"{subject}_test.csv", GOOD_MMLU_ROWS)
    error = fails_with([str(fused_model_dir), "--tasks", "mmlu", "--data_dir", str(tmp_path)], capsys)
    assert f"55 of mmlu's files are missing from {tmp_path / 'mmlu'}: test/abstract_algebra_test.csv, " in error
    assert "and 47 more" in error and "--subjects NAME,... evaluates only the subjects you have" in error
    # Few-shot needs the dev files of the subjects that are there.
    error = fails_with(
        [str(fused_model_dir), "--tasks", "mmlu", "--data_dir", str(tmp_path), "--subjects", "anatomy,virology",
         "--num_fewshot", "1"], capsys,
    )  # fmt: skip
    assert "2 of mmlu's files are missing" in error and "dev/anatomy_dev.csv, dev/virology_dev.csv." in error
    write_csv(tmp_path / "mmlu" / "dev" / "anatomy_dev.csv", GOOD_MMLU_ROWS)
    error = fails_with(
        [str(fused_model_dir), "--tasks", "mmlu", "--data_dir", str(tmp_path), "--subjects", "anatomy",
         "--num_fewshot", "3"], capsys,
    )  # fmt: skip
    assert error.endswith("mmlu anatomy: --num_fewshot 3 but its dev split has only 2 questions")


def test_without_data_dir_an_unreachable_hub_says_what_to_pass(fused_model_dir, tmp_path, capsys, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(yuren_eval.lm, "load_text_model", lambda *a, **k: pytest.fail("model loaded"))
    for benchmark, layout in (("mmlu", "DIR/mmlu/test/SUBJECT_test.csv"), ("ceval", "DIR/ceval/val/SUBJECT_val.csv")):
        error = fails_with([str(fused_model_dir), "--tasks", benchmark, "--subjects", "college_physics"], capsys)
        assert f"cannot read {benchmark} subject college_physics from the hub" in error
        assert (
            "the hub is unreachable" in error
            and f"pass --data_dir DIR with {benchmark}'s own release in {layout}" in error
        )
