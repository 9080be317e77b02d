"""`evaluate` on MMLU / C-Eval: lm-eval's scores are the tiny model's own choices, counted here independently."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from yuren_core.chatml import render
from yuren_core.loading import load_model
from yuren_eval.__main__ import main
from yuren_eval.report import SEED_SCORES, SubjectScore, table_row
from yuren_eval.subjects import CEVAL_CATEGORIES, CEVAL_NAMES, MMLU_CATEGORIES, subjects
from yuren_eval.tasks import CEVAL, INVALID, LETTERS, MMLU, extract_choice, prompt_builder, question_text
from yuren_eval.text_data import DataError, normalise

QUESTIONS = [
    ("What is one plus one?", ["1", "2", "3", "4"]),
    ("Which of these is a colour?", ["red", "dog", "cat", "sun"]),
    ("Which letter comes last?", ["a", "b", "c", "d"]),
    ("我们在哪里？", ["家", "学校", "公园", "商店"]),
]
# Two subjects per benchmark, in two categories each.
MMLU_SUBJECTS = {"anatomy": "STEM", "philosophy": "Humanities"}
CEVAL_SUBJECTS = {"advanced_mathematics": "STEM", "law": "Humanities"}


@pytest.fixture(scope="module")
def tiny(fused_model_dir):
    model, tokenizer, _ = load_model(fused_model_dir)
    return model, tokenizer


@torch.no_grad()
def model_choice(model, tokenizer, prompt: str) -> int:
    """The letter the model scores highest as the start of its answer, computed here from the logits."""
    context = render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True).input_ids
    scores = []
    for letter in LETTERS:
        whole = render(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": letter}])
        answer = whole.input_ids[len(context) : -2]  # without <|im_end|> and eos
        ids = torch.tensor([context + answer])
        logprobs = model(input_ids=ids).logits[0, len(context) - 1 : -1].log_softmax(-1)
        scores.append(sum(logprobs[i, token].item() for i, token in enumerate(answer)))
    return max(range(len(LETTERS)), key=scores.__getitem__)


def write_release(tmp_path: Path, tiny, gold_shift: dict[str, int]) -> tuple[Path, dict[str, float]]:
    """MMLU's and C-Eval's own CSV layouts; gold answers placed so each subject's true accuracy is known.

    For subject s the first ``gold_shift[s]`` questions' gold answer is the model's own choice (right),
    the rest are another letter (wrong). Returns the data dir and each subject's expected accuracy.
    """
    model, tokenizer = tiny
    expected = {}
    for benchmark, chosen in ((MMLU, MMLU_SUBJECTS), (CEVAL, CEVAL_SUBJECTS)):
        for subject in chosen:
            ask = prompt_builder(benchmark, subject, "loglikelihood")
            rows = []
            for number, (question, choices) in enumerate(QUESTIONS):
                choice = model_choice(model, tokenizer, ask({"question": question, "choices": choices, "gold": 0}))
                gold = choice if number < gold_shift[subject] else (choice + 1) % 4
                rows.append([question, *choices, LETTERS[gold]])
            file = tmp_path / benchmark.name / benchmark.local_file.format(subject=subject)
            file.parent.mkdir(parents=True, exist_ok=True)
            with file.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                if benchmark is CEVAL:  # C-Eval's CSVs have a header and an id column; MMLU's have neither
                    writer.writerow(["id", "question", "A", "B", "C", "D", "answer"])
                    rows = [[i, *row] for i, row in enumerate(rows)]
                writer.writerows(rows)
            expected[subject] = gold_shift[subject] / len(QUESTIONS)
    return tmp_path, expected


def test_loglikelihood_scores_count_the_models_own_choices(tiny, fused_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    shifts = {"anatomy": 1, "philosophy": 3, "advanced_mathematics": 2, "law": 4}
    data_dir, expected = write_release(tmp_path / "data", tiny, shifts)
    out = tmp_path / "out"
    code = main(
        [
            str(fused_model_dir), "--tasks", "mmlu,ceval", "--protocol", "loglikelihood", "--data_dir", str(data_dir),
            "--subjects", ",".join([*MMLU_SUBJECTS, *CEVAL_SUBJECTS]), "--output_dir", str(out), "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0
    mmlu, ceval = (json.loads((out / f"{name}.json").read_text()) for name in ("mmlu", "ceval"))
    for report, chosen in ((mmlu, MMLU_SUBJECTS), (ceval, CEVAL_SUBJECTS)):
        assert {s: v["accuracy"] for s, v in report["subjects"].items()} == {s: expected[s] for s in chosen}
        assert all(v["n"] == len(QUESTIONS) for v in report["subjects"].values())
    assert mmlu["table"] == {"Humanities": 75.0, "STEM": 25.0}
    # C-Eval's Average is over subjects; advanced_mathematics is also one of the hard subjects.
    assert ceval["table"] == {"Average": 75.0, "Avg(Hard)": 50.0, "STEM": 50.0, "Humanities": 100.0}
    markdown = (out / "mmlu.md").read_text()
    assert "| fused" in markdown and "| 75.00 | - | 25.00 | - | - |" in markdown and "44.24" in markdown
    assert (out / "mmlu.png").read_bytes()[:4] == b"\x89PNG"

    # --limit: only the first question of each subject (right in every subject).
    code = main(
        [
            str(fused_model_dir), "--tasks", "mmlu", "--protocol", "loglikelihood", "--data_dir", str(data_dir),
            "--subjects", "anatomy", "--output_dir", str(out / "limited"), "--limit", "1", "--device", "cpu",
        ]
    )  # fmt: skip
    limited = json.loads((out / "limited" / "mmlu.json").read_text())
    assert limited["subjects"] == {"anatomy": {"accuracy": 1.0, "n": 1, "unparsed": 0}}


def test_tables_average_as_the_seed_does():
    mmlu = {s: SubjectScore(0.1 * (i % 7), 10) for i, s in enumerate(subjects(MMLU_CATEGORIES))}
    row = table_row("mmlu", mmlu)
    assert list(row) == list(SEED_SCORES["mmlu"])
    for category, members in MMLU_CATEGORIES.items():
        assert row[category] == round(100 * sum(mmlu[s].accuracy for s in members) / len(members), 2)
    assert row["Average"] == pytest.approx(sum(row[c] for c in MMLU_CATEGORIES) / 4, abs=0.01)
    # The seed's own MMLU Average is the mean of its four category scores.
    seed = SEED_SCORES["mmlu"]
    assert round(sum(seed[c] for c in MMLU_CATEGORIES) / 4, 2) == seed["Average"]
    ceval = {s: SubjectScore(1.0 if "math" in s else 0.0, 10) for s in subjects(CEVAL_CATEGORIES)}
    row = table_row("ceval", ceval)
    assert list(row) == list(SEED_SCORES["ceval"])
    # 5 of 52 subjects are mathematics; 3 of the 8 hard ones.
    assert row["Average"] == round(100 * 4 / 52, 2) and row["Avg(Hard)"] == 37.5


def test_categories_agree_with_lm_evals_own_task_lists():
    import lm_eval

    tasks = Path(lm_eval.__file__).parent / "tasks"
    tags = {"mmlu_stem_tasks": "STEM", "mmlu_humanities_tasks": "Humanities"}
    tags |= {"mmlu_social_sciences_tasks": "Social Sciences", "mmlu_other_tasks": "Other"}
    theirs = {}
    for file in (tasks / "mmlu" / "default").glob("mmlu_*.yaml"):
        config = yaml.safe_load(file.read_text())
        theirs[config["dataset_name"]] = tags[config["tag"]]
    ours = {s: c for c, members in MMLU_CATEGORIES.items() for s in members}
    assert ours == theirs
    ceval = {f.stem.removeprefix("ceval-valid_") for f in (tasks / "ceval").glob("ceval-valid_*.yaml")}
    assert set(subjects(CEVAL_CATEGORIES)) == ceval


def test_ceval_prompts_name_the_subject_as_ceval_does():
    import lm_eval

    # C-Eval's own task files open each prompt with the subject's Chinese name; ours names it the same way.
    tasks = Path(lm_eval.__file__).parent / "tasks" / "ceval"
    for file in tasks.glob("ceval-valid_*.yaml"):
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
        subject = config["dataset_name"]
        doc = {"question": "问题", "choices": ["甲", "乙", "丙", "丁"], "gold": 0}
        theirs = config["description"].strip()
        assert theirs == f"以下是中国关于{CEVAL_NAMES[subject]}的单项选择题，请选出其中的正确答案。"
        prompt = prompt_builder(CEVAL, subject, "loglikelihood")(doc)
        assert prompt == f"{theirs}\n\n问题\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："


def test_every_layout_normalises_to_the_same_question():
    hub_mmlu = {"question": "Q ", "subject": "x", "choices": ["a", "b", "c", "d"], "answer": 2}
    csv_layout = {"question": "Q", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "C"}
    expected = {"question": "Q", "choices": ["a", "b", "c", "d"], "gold": 2}
    assert normalise(hub_mmlu, "hub row 0") == normalise(csv_layout, "f.csv, line 1") == expected
    with pytest.raises(DataError, match="f.csv, line 3: answer 'E'"):
        normalise({**csv_layout, "answer": "E"}, "f.csv, line 3")


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("Both fit, but the first is wider.\nAnswer: B", "B"),
        ("所以选 A 不对。\n答案：C", "C"),
        ("The answer is (D).", "D"),
        ("A is wrong and so is B; C it is", "C"),
        ("I am not sure about this one.", "[invalid]"),
    ],
)
def test_chain_of_thought_answer_extraction(text, letter):
    assert extract_choice(text) == letter


def letter_by_length(text: str) -> str:
    """A stand-in answer reader: the tiny model's text names no letter, but its length depends on every token."""
    return LETTERS[len(text) % len(LETTERS)]


@torch.no_grad()
def model_cot_text(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """The model's greedy chain of thought, generated here."""
    ids = render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True).input_ids
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    output = model.generate(
        input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop
    )
    return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)


def letter_or_unparsed(text: str) -> str:
    """A stand-in answer reader: a letter from the text's length, or none read (``[invalid]``) for an even length."""
    return INVALID if len(text) % 2 == 0 else letter_by_length(text)


def test_chain_of_thought_scores_count_the_models_own_answers(tiny, fused_model_dir, tmp_path, monkeypatch):
    import yuren_eval.tasks

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(yuren_eval.tasks, "extract_choice", letter_or_unparsed)
    model, tokenizer = tiny
    ask = prompt_builder(MMLU, "anatomy", "cot")
    rows, expected_samples = [], []
    for number, (question, choices) in enumerate(QUESTIONS):
        prompt = ask({"question": question, "choices": choices, "gold": 0})
        text = model_cot_text(model, tokenizer, prompt, 24)
        chosen = letter_or_unparsed(text)
        # The first question is answered right (if its answer is read), the others wrong.
        gold = LETTERS[0] if chosen == INVALID else chosen if number < 1 else LETTERS[(LETTERS.index(chosen) + 1) % 4]
        rows.append([question, *choices, gold])
        expected_samples.append(
            {
                "subject": "anatomy",
                "doc_id": number,
                "prompt": prompt,
                "answer": text,
                "extracted": chosen,
                "correct": gold,
            }
        )
    file = tmp_path / "mmlu" / "test" / "anatomy_test.csv"
    file.parent.mkdir(parents=True)
    with file.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    out = tmp_path / "out"
    limit = 3
    code = main(
        [
            str(fused_model_dir), "--tasks", "mmlu", "--protocol", "cot", "--max_gen_toks", "24",
            "--data_dir", str(tmp_path), "--subjects", "anatomy", "--output_dir", str(out), "--device", "cpu",
            "--limit", str(limit), "--log_samples",
        ]
    )  # fmt: skip
    assert code == 0
    expected_samples = expected_samples[:limit]
    unparsed = sum(sample["extracted"] == INVALID for sample in expected_samples)
    right = int(expected_samples[0]["extracted"] != INVALID)
    report = json.loads((out / "mmlu.json").read_text())
    assert report["subjects"] == {"anatomy": {"accuracy": right / limit, "n": limit, "unparsed": unparsed}}
    samples = [json.loads(line) for line in (out / "mmlu_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert samples == expected_samples
    markdown = (out / "mmlu.md").read_text(encoding="utf-8")
    summary = (
        f"cot, zero-shot, 1/57 subjects, limit {limit} per subject, {limit} questions, {unparsed} answers unparsed"
    )
    assert summary in markdown and report["run"].startswith(summary)
    assert f"| anatomy | {limit} | {100 * right / limit:.2f} | {unparsed} |" in markdown


def test_few_shot_examples_come_from_the_dev_split(tiny, fused_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, tokenizer = tiny
    dev, test = QUESTIONS[:2], QUESTIONS[2:]
    expected = {}
    for benchmark, subject in ((MMLU, "anatomy"), (CEVAL, "law")):
        docs = [{"question": q, "choices": c, "gold": i} for i, (q, c) in enumerate(dev)]
        # The golden layout: instruction, each dev question answered with its letter after the cue, the question.
        gap = " " if benchmark is MMLU else ""
        head = prompt_builder(benchmark, subject, "loglikelihood")(docs[0]).split("\n\n")[0]
        shots = "".join(f"{question_text(d)}\n{benchmark.answer_cue}{gap}{LETTERS[d['gold']]}\n\n" for d in docs)
        rows, prompts = [], []
        for number, (question, choices) in enumerate(test):
            prompt = (
                f"{head}\n\n{shots}{question_text({'question': question, 'choices': choices})}\n{benchmark.answer_cue}"
            )
            choice = model_choice(model, tokenizer, prompt)
            rows.append([question, *choices, LETTERS[choice if number == 0 else (choice + 1) % 4]])
            prompts.append(prompt)
        expected[benchmark.name] = prompts
        dev_rows = [[d["question"], *d["choices"], LETTERS[d["gold"]]] for d in docs]
        folder = tmp_path / benchmark.name
        if benchmark is CEVAL:  # C-Eval's dev files also explain each answer
            rows = [["id", "question", "A", "B", "C", "D", "answer"], *[[i, *r] for i, r in enumerate(rows)]]
            dev_rows = [["id", "question", "A", "B", "C", "D", "answer", "explanation"]] + [
                [i, *r, "因为"] for i, r in enumerate(dev_rows)
            ]
        for path, content in ((benchmark.local_file, rows), (benchmark.local_dev_file, dev_rows)):
            file = folder / path.format(subject=subject)
            file.parent.mkdir(parents=True, exist_ok=True)
            with file.open("w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows(content)
    out = tmp_path / "out"
    code = main(
        [
            str(fused_model_dir), "--tasks", "mmlu,ceval", "--protocol", "loglikelihood", "--num_fewshot", "2",
            "--data_dir", str(tmp_path), "--subjects", "anatomy,law", "--output_dir", str(out), "--device", "cpu",
            "--log_samples",
        ]
    )  # fmt: skip
    assert code == 0
    for name, prompts in expected.items():
        samples = [
            json.loads(line) for line in (out / f"{name}_samples.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        assert [sample["prompt"] for sample in samples] == prompts
        report = json.loads((out / f"{name}.json").read_text())
        assert report["num_fewshot"] == 2 and next(iter(report["subjects"].values()))["accuracy"] == 0.5
        assert "loglikelihood, 2-shot, 1/" in (out / f"{name}.md").read_text(encoding="utf-8")


@torch.no_grad()
def plain_choice(model, tokenizer, prompt: str) -> int:
    """The letter a base model scores highest after ``prompt`` as plain text (lm-eval's base-model layout)."""
    context = tokenizer(prompt).input_ids
    scores = []
    for letter in LETTERS:
        whole = tokenizer(f"{prompt} {letter}").input_ids
        answer = whole[len(context) :]
        logprobs = model(input_ids=torch.tensor([whole])).logits[0, len(context) - 1 : -1].log_softmax(-1)
        scores.append(sum(logprobs[i, token].item() for i, token in enumerate(answer)))
    return max(range(len(LETTERS)), key=scores.__getitem__)


def test_llama_text_checkpoints_are_evaluated(tiny_dir, prepared_base, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    from yuren_core.vocab import load_tokenizer

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # make-tiny-model's base (no ChatML tokens: plain-text prompts) and the prepared base (ChatML, as stage 1's).
    for checkpoint, choose, prompt_format in ((tiny_dir / "base", plain_choice, "plain text"),
                                              (prepared_base, model_choice, "chatml")):  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        tokenizer = load_tokenizer(str(checkpoint))
        ask = prompt_builder(MMLU, "anatomy", "loglikelihood")
        rows = []
        for number, (question, choices) in enumerate(QUESTIONS):
            choice = choose(model, tokenizer, ask({"question": question, "choices": choices, "gold": 0}))
            rows.append([question, *choices, LETTERS[choice if number == 0 else (choice + 1) % 4]])
        data = tmp_path / prompt_format / "data"
        file = data / "mmlu" / "test" / "anatomy_test.csv"
        file.parent.mkdir(parents=True)
        with file.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
        out = tmp_path / prompt_format / "out"
        code = main(
            [
                str(checkpoint), "--tasks", "mmlu", "--protocol", "loglikelihood", "--data_dir", str(data),
                "--subjects", "anatomy", "--output_dir", str(out), "--device", "cpu",
            ]
        )  # fmt: skip
        assert code == 0
        report = json.loads((out / "mmlu.json").read_text())
        assert report["prompt_format"] == prompt_format
        assert report["subjects"]["anatomy"]["accuracy"] == 1 / len(QUESTIONS)
    # A text checkpoint has no vision tower: image sets are refused before anything loads.
    with pytest.raises(SystemExit) as exit_info:
        main([str(prepared_base), "--tasks", "mmlu,pope", "--data_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "is a LLaMA text checkpoint (model_type 'llama'): it has no vision tower for pope" in capsys.readouterr().err


def test_plot_shows_zero_scores_counts_and_a_legend_clear_of_the_bars():
    from yuren_eval.report import subject_figure

    scores = {"law": SubjectScore(0.0, 24), "advanced_mathematics": SubjectScore(0.5, 19)}
    scores |= {"logic": SubjectScore(1.0, 22), "marxism": SubjectScore(0.25, 19)}
    figure = subject_figure("ceval", scores)
    axes = figure.axes[0]
    labels = [label.get_text() for label in axes.get_yticklabels()]
    # STEM first, then Social Sciences, then Humanities, as C-Eval lists its categories.
    assert labels == ["advanced mathematics (19)", "marxism (19)", "law (24)", "logic (22)"]
    assert [text.get_text() for text in axes.texts] == ["50.0", "25.0", "0.0", "100.0"]
    # The 0% subject (row 2) has a marker on the axis where its bar has no length.
    markers = [(line.get_xdata()[0], line.get_ydata()[0]) for line in axes.lines if line.get_marker() == "D"]
    assert markers == [(0, 2)]
    figure.canvas.draw()
    legend, plot_area = axes.get_legend().get_window_extent(), axes.get_window_extent()
    assert legend.y1 < plot_area.y0
