"""BEnQA (docs/methods.md#benqa): the official layout, its anomalies, both languages, few-shot, chain of
thought, the en-bn gap, and clear errors for malformed data. Scoring runs through the core runner with fake backends."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from lmlab.core.commands.doctor import demo_steps
from lmlab.core.evaluation.backends import ChoiceRequest, GenerateRequest
from lmlab.core.evaluation.request_cache import RequestCache
from lmlab.core.evaluation.scoring import (
    BenchmarkSpec,
    EvalContext,
    EvalItem,
    EvalSettings,
    LoadedData,
    benchmarks,
    limit_items,
    score_items,
    summarize,
)
from lmlab.core.files.records import example
from lmlab.core.kernel.errors import DataError, LmlabError
from lmlab.plugins.benqa.data import parse_answer
from tests.conftest import run_cli
from tests.plugins.benqa.fixtures import COLUMNS, PHYSICS, SCIENCE, SHOT_ANSWERS, write_benqa, write_csv

LETTERS = "abcd"


@pytest.fixture
def spec() -> BenchmarkSpec:
    return benchmarks()["benqa"]


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return write_benqa(tmp_path / "benqa")


def load(spec: BenchmarkSpec, data: Path | str, **kwargs) -> LoadedData:
    options = {key: kwargs.pop(key) for key in ("lang", "append_translation") if key in kwargs}
    return spec.load(str(data), EvalSettings(options=options, **kwargs))


def by_lang(items: list[EvalItem], lang: str) -> list[EvalItem]:
    return [item for item in items if item.groups["language"] == lang]


class Fake:
    """A backend that answers `choose(item)` for every item, in loglik and in generate mode."""

    def __init__(self, items: Sequence[EvalItem], choose: Callable[[EvalItem], int], name: str,
                 text: Callable[[int], str] = lambda n: f" {LETTERS[n]}") -> None:
        self.identity = f"fake-{name}"
        self.by_prompt = {p: item for item in items for p in (item.prompt, item.generate_prompt)}
        self.choose, self.text = choose, text

    def loglik(self, requests: Sequence[ChoiceRequest]) -> list[list[float]]:
        picks = [self.choose(self.by_prompt[r.context]) for r in requests]
        return [[0.0 if n == pick else -5.0 for n in range(len(r.continuations))]
                for r, pick in zip(requests, picks, strict=True)]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        return [[self.text(self.choose(self.by_prompt[r.prompt]))] for r in requests]


def evaluate(spec: BenchmarkSpec, loaded: LoadedData, backend: Fake, tmp_path: Path,
             settings: EvalSettings | None = None) -> dict:
    settings = settings or EvalSettings()
    ctx = EvalContext(settings, RequestCache(tmp_path / "cache.sqlite"), lambda *_: backend)
    try:
        return summarize(spec, score_items(spec, loaded.items, backend, ctx))
    finally:
        ctx.cache.close()


# --- loading the official layout --------------------------------------------------------------------------


def test_loads_both_languages_and_counts_the_skipped_star_answer(spec: BenchmarkSpec, release: Path) -> None:
    loaded = load(spec, release)
    usable = len(PHYSICS) + len(SCIENCE) - 1  # one "*" answer
    assert len(by_lang(loaded.items, "en")) == len(by_lang(loaded.items, "bn")) == usable
    assert loaded.skipped.as_dict() == {"answer not a-d": 1}
    assert "8th-Science.csv" in loaded.skipped.summary()
    assert Path(loaded.source) == release / "data" / "BEnQA"
    assert len({item.id for item in loaded.items}) == len(loaded.items)
    # the uppercase "B" is read as b
    lens = [item for item in loaded.items if "myopia" in item.prompt]
    assert [item.gold for item in lens] == [1] and LETTERS[lens[0].gold] == "b"
    first = loaded.items[0]
    assert list(first.groups) == ["subject", "language", "grade", "subject_name"]
    assert first.labels == ("a", "b", "c", "d") and first.choices == (" a", " b", " c", " d")
    assert {item.groups["subject"] for item in loaded.items} == {"10th-Physics", "8th-Science"}
    assert {item.groups["grade"] for item in loaded.items} == {"8th", "10th"}


def test_item_ids_name_subject_line_and_language(spec: BenchmarkSpec, release: Path) -> None:
    ids = [item.id for item in load(spec, release).items]
    assert "10th-Physics:2:en" in ids and "10th-Physics:2:bn" in ids
    # the 4th physics question spans lines 5-7 (a line break in each language), so the 5th starts on line 8
    assert "10th-Physics:8:en" in ids and "10th-Physics:6:en" not in ids


def test_lang_option_selects_languages(spec: BenchmarkSpec, release: Path) -> None:
    english = load(spec, release, lang="en").items
    bengali = load(spec, release, lang="bn").items
    assert {item.groups["language"] for item in english} == {"en"}
    assert {item.groups["language"] for item in bengali} == {"bn"}
    assert len(english) == len(bengali) == len(load(spec, release).items) // 2
    force = next(item for item in bengali if "বলের একক কী?" in item.prompt)
    assert "b) নিউটন" in force.prompt and "newton" not in force.prompt  # Bengali options, latin letters
    assert force.prompt.endswith("উত্তর:") and "Question" not in force.prompt
    with pytest.raises(LmlabError, match="fr"):
        load(spec, release, lang="en,fr")


def test_append_translation_puts_the_english_question_into_the_bengali_prompt(spec: BenchmarkSpec,
                                                                              release: Path) -> None:
    plain = {item.id: item for item in load(spec, release).items}
    translated = {item.id: item for item in load(spec, release, append_translation=True).items}
    bn = translated["10th-Physics:2:bn"].prompt
    assert "বলের একক কী?\n(English: What is the unit of force?)" in bn
    assert "English:" not in plain["10th-Physics:2:bn"].prompt
    assert translated["10th-Physics:2:en"].prompt == plain["10th-Physics:2:en"].prompt


@pytest.mark.parametrize("where", ["root", "data", "BEnQA"])
def test_data_may_name_the_repo_the_data_folder_or_benqa(spec: BenchmarkSpec, release: Path, where: str) -> None:
    data = {"root": release, "data": release / "data", "BEnQA": release / "data" / "BEnQA"}[where]
    assert len(load(spec, data).items) == 2 * (len(PHYSICS) + len(SCIENCE) - 1)


def test_question_type_column_becomes_a_breakdown(spec: BenchmarkSpec, tmp_path: Path) -> None:
    loaded = load(spec, write_benqa(tmp_path, question_type=True))
    assert {item.groups["question_type"] for item in loaded.items} == {"Reasoning", "Factual Knowledge"}
    summary = summarize(spec, [{"groups": item.groups, "gold": item.gold, "pred": item.gold, "correct": 1.0}
                               for item in loaded.items])
    assert set(summary["by"]["question_type"]) == {"Reasoning", "Factual Knowledge"}


def test_small_limit_covers_every_subject_in_both_languages(spec: BenchmarkSpec, release: Path) -> None:
    chosen = limit_items(load(spec, release).items, 4)
    assert {(i.groups["subject"], i.groups["language"]) for i in chosen} == {
        ("10th-Physics", "en"), ("10th-Physics", "bn"), ("8th-Science", "en"), ("8th-Science", "bn")}


def test_bundled_examples_load(spec: BenchmarkSpec) -> None:
    loaded = load(spec, spec.default_data())
    assert Path(spec.default_data()) == example("eval/benqa")
    assert len({item.groups["subject"] for item in loaded.items}) == 4
    assert len(by_lang(loaded.items, "en")) == len(by_lang(loaded.items, "bn")) == 24
    assert loaded.skipped.total == 0
    # the bundled few-shot files serve few-shot and chain of thought too
    cot = load(spec, spec.default_data(), num_fewshot=5, cot=True, mode="generate")
    assert all(item.generate_prompt.count('{"Answer": "') >= 5 for item in cot.items)


# --- scoring --------------------------------------------------------------------------------------------


def test_always_correct_backend_scores_100_percent(spec: BenchmarkSpec, release: Path, tmp_path: Path) -> None:
    loaded = load(spec, release)
    oracle = Fake(loaded.items, lambda item: item.gold, "oracle")
    summary = evaluate(spec, loaded, oracle, tmp_path)
    assert summary["accuracy"] == 1.0 and summary["n"] == len(loaded.items)
    assert summary["by"]["language"]["en"]["accuracy"] == summary["by"]["language"]["bn"]["accuracy"] == 1.0
    assert summary["gap_en_minus_bn"] == 0.0
    generated = evaluate(spec, loaded, oracle, tmp_path, EvalSettings(mode="generate"))
    assert generated["accuracy"] == 1.0 and generated["unparsed"] == 0


def test_always_a_scores_the_share_of_gold_a(spec: BenchmarkSpec, release: Path, tmp_path: Path) -> None:
    loaded = load(spec, release)
    summary = evaluate(spec, loaded, Fake(loaded.items, lambda item: 0, "always-a"), tmp_path)
    for lang in ("en", "bn"):
        items = by_lang(loaded.items, lang)
        share = sum(item.gold == 0 for item in items) / len(items)
        assert 0 < share < 1
        assert summary["by"]["language"][lang]["accuracy"] == pytest.approx(share)


def test_gap_en_minus_bn(spec: BenchmarkSpec, release: Path, tmp_path: Path) -> None:
    loaded = load(spec, release)
    english_only = Fake(loaded.items, lambda item: item.gold if item.groups["language"] == "en"
                        else (item.gold + 1) % 4, "english-only")
    summary = evaluate(spec, loaded, english_only, tmp_path)
    assert summary["by"]["language"]["en"]["accuracy"] == 1.0
    assert summary["by"]["language"]["bn"]["accuracy"] == 0.0
    assert summary["gap_en_minus_bn"] == pytest.approx(1.0)
    assert summary["accuracy"] == pytest.approx(0.5)
    one_language = load(spec, release, lang="en")
    assert "gap_en_minus_bn" not in evaluate(spec, one_language, english_only, tmp_path)


# --- few-shot and chain of thought ------------------------------------------------------------------------


def test_fewshot_prompt_holds_k_solved_examples_from_the_fewshot_file(spec: BenchmarkSpec, release: Path) -> None:
    items = {item.id: item for item in load(spec, release, num_fewshot=2).items}
    en, bn = items["10th-Physics:2:en"].prompt, items["10th-Physics:2:bn"].prompt
    assert en.count("Answer:") == 3 and bn.count("উত্তর:") == 3
    assert f"Question: Solved question 0?\na) opt0a\nb) opt0b\nc) opt0c\nd) opt0d\nAnswer: {SHOT_ANSWERS[0]}\n\n" in en
    assert f"Answer: {SHOT_ANSWERS[1]}\n\nQuestion: What is the unit of force?" in en
    assert "Solved question 2?" not in en
    # Bengali examples read the Bengali columns, 'C Bn' (capital C, as released) included
    assert "প্রশ্ন: সমাধানকৃত প্রশ্ন 0?\na) বিকল্প0ক\nb) বিকল্প0খ\nc) বিকল্প0গ\nd) বিকল্প0ঘ\nউত্তর: c\n\n" in bn
    # more than 5 asked: the file's 5 examples
    assert load(spec, release, num_fewshot=9).items[0].prompt.count("Answer:") == 6


def test_an_example_that_is_the_question_itself_is_replaced(spec: BenchmarkSpec, tmp_path: Path) -> None:
    root = write_benqa(tmp_path)
    fewshot = root / "data" / "BEnQA-few_shots_examples" / "8th-Science-few_shot.csv"
    fewshot.write_text(fewshot.read_text(encoding="utf-8").replace("Solved question 0?", "Water boils at"),
                       encoding="utf-8")
    items = {item.id: item for item in load(spec, root, num_fewshot=2).items}
    leaked = items["8th-Science:5:en"].prompt
    assert leaked.count("Water boils at") == 1 and "Solved question 1?" in leaked and "Solved question 2?" in leaked
    assert items["8th-Science:2:en"].prompt.count("Water boils at") == 1  # other questions keep it


def test_missing_fewshot_file_is_a_clear_error_only_when_asked(spec: BenchmarkSpec, tmp_path: Path) -> None:
    root = write_benqa(tmp_path, fewshot=False)
    assert load(spec, root).items
    with pytest.raises(DataError, match="8th-Science-few_shot.csv"):
        load(spec, root, num_fewshot=1)


def test_cot_prompt_uses_worked_solutions(spec: BenchmarkSpec, release: Path) -> None:
    items = {item.id: item for item in load(spec, release, num_fewshot=1, cot=True, mode="generate").items}
    en, bn = items["10th-Physics:2:en"], items["10th-Physics:2:bn"]
    assert 'think step by step' in en.generate_prompt.lower() and '{"Answer": "x"}' in en.generate_prompt
    assert 'Worked solution 0.\n\nSo, the correct answer is {"Answer": "c"}\n\n' in en.generate_prompt
    assert 'কার্যকর সমাধান 0।' in bn.generate_prompt and "Worked solution" not in bn.generate_prompt
    assert en.generate_prompt.endswith("Solution:") and en.prompt.endswith("Answer:")


def test_parse_finds_the_last_json_answer(spec: BenchmarkSpec, release: Path) -> None:
    item = load(spec, release, cot=True, mode="generate").items[0]
    assert parse_answer('a) is wrong, b) too ... so {"Answer": "c"}', item) == 2
    assert parse_answer('First {"Answer": "a"}, no wait: {{"Answer": "D"}}', item) == 3
    assert parse_answer('সুতরাং, সঠিক উত্তর হল {"Answer": "গ"}।', item) == 2
    assert parse_answer("So the answer is (b).", item) == 1
    assert parse_answer('I think this is a hard one. {"Answer": "Reasoning"}', item) is None
    plain = load(spec, release, mode="generate").items[0]
    assert parse_answer(" b", plain) == 1 and parse_answer("Answer: d", plain) == 3


def test_anomalous_cot_answers_count_as_unparsed(spec: BenchmarkSpec, release: Path, tmp_path: Path) -> None:
    settings = EvalSettings(mode="generate", cot=True)
    loaded = load(spec, release, cot=True, mode="generate")
    texts = {0: "Let me think. This is a tricky one, I am not sure.", 1: 'So {"Answer": "b"}',
             2: 'So {"Answer": "c"}', 3: 'So {"Answer": "d"}'}
    summary = evaluate(spec, loaded, Fake(loaded.items, lambda item: item.gold, "cot", texts.__getitem__),
                       tmp_path, settings)
    gold_a = sum(item.gold == 0 for item in loaded.items)
    assert summary["unparsed"] == gold_a > 0
    assert summary["accuracy"] == pytest.approx(1 - gold_a / len(loaded.items))


# --- malformed input through the CLI ---------------------------------------------------------------------


def cli_error(*args: str) -> tuple[str, float]:
    started = time.perf_counter()
    result = run_cli("eval", "benqa", *args)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0], time.perf_counter() - started


def test_missing_column_exits_2_naming_file_and_column(release: Path, tmp_path: Path) -> None:
    broken = write_csv(release / "data" / "BEnQA" / "12th-Chemistry-I.csv", [c for c in COLUMNS if c != "C Bn"],
                       [[*row[:8], *row[9:]] for row in PHYSICS])
    run = tmp_path / "run"
    line, seconds = cli_error("--data", str(release), "-o", str(run))
    assert str(broken) in line and "'C Bn'" in line and "missing column" in line
    assert not run.exists() and seconds < 60  # fails while reading the data, before any model loads


def test_folder_without_benqa_exits_2_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    line, _ = cli_error("--data", str(tmp_path / "elsewhere"))
    assert str(tmp_path / "elsewhere") in line and "BEnQA" in line
    line, _ = cli_error("--data", str(tmp_path / "missing"), "--lang", "en")
    assert "no such directory" in line


def test_unknown_language_exits_2(release: Path) -> None:
    line, _ = cli_error("--data", str(release), "--lang", "hi")
    assert "--lang" in line and "'hi'" in line


# --- registration -----------------------------------------------------------------------------------------


def test_registered_with_options_and_demo_step(spec: BenchmarkSpec) -> None:
    assert {option.name: option.default for option in spec.options} == {"lang": "en,bn",
                                                                         "append_translation": False}
    assert spec.breakdowns[:3] == ("language", "subject", "grade") and "question_type" in spec.breakdowns
    step = next(step for step in demo_steps() if step.name == "benqa")
    assert step.order == 41 and step.quick is False
    help_text = run_cli("eval", "benqa", "--help").stdout
    assert "--lang" in help_text and "--append-transl" in help_text
