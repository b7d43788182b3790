"""`lmlab eval holism` (docs/methods.md#epistemological-holism, docs/holism.md): the seed set, loglik preference
scoring per byte, the rubric judges (keywords and a judge model through the cache), the core/peripheral split, and clear
errors on malformed items. No real model: a tiny in-test backend answers every request."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from lmlab.core.evaluation.backends import ChoiceRequest, GenerateRequest
from lmlab.core.evaluation.request_cache import RequestCache
from lmlab.core.evaluation.scoring import (
    BenchmarkSpec,
    EvalContext,
    EvalItem,
    EvalSettings,
    benchmarks,
    score_items,
    summarize,
)
from lmlab.core.files.records import example
from tests.conftest import run_cli, write_jsonl

SEED = example("holism/items.jsonl")


class FakeBackend:
    """loglik: `scores(request)` per request; generate: `answer(request)` per request (all counted)."""

    def __init__(self, identity: str, scores: Callable[[ChoiceRequest], list[float]] | None = None,
                 answer: Callable[[GenerateRequest], str] | None = None) -> None:
        self.identity = identity
        self.scores = scores or (lambda r: [0.0] * len(r.continuations))
        self.answer = answer or (lambda r: "")
        self.generated: list[GenerateRequest] = []

    def loglik(self, requests: Sequence[ChoiceRequest]) -> list[list[float]]:
        return [self.scores(r) for r in requests]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        self.generated += requests
        return [[self.answer(r)] for r in requests]


def spec() -> BenchmarkSpec:
    return benchmarks()["holism"]


def load(data: Path = SEED, **settings: Any) -> tuple[list[EvalItem], EvalSettings]:
    config = EvalSettings(**{"options": {"judge": "keywords", "judge_backend": "hf"}, **settings})
    return spec().load(str(data), config).items, config


def evaluate(items: list[EvalItem], settings: EvalSettings, backend: FakeBackend, cache_path: Path,
             backend_for: Callable[[str, str], Any] | None = None, bench: BenchmarkSpec | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]], RequestCache]:
    bench = bench or spec()
    cache = RequestCache(cache_path)
    ctx = EvalContext(settings, cache, backend_for or (lambda name, model: pytest.fail("no judge model")))
    results = score_items(bench, items, backend, ctx)
    cache.close()
    return summarize(bench, results), results, cache


def gold_preferring(items: list[EvalItem]) -> Callable[[ChoiceRequest], list[float]]:
    """Log-likelihoods that favour the gold option by a wide margin, whatever its length."""
    gold = {item.prompt: item.choices[item.gold] for item in items if item.rubric is None}
    return lambda r: [-1.0 if c == gold[r.context] else -500.0 for c in r.continuations]


def seed_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SEED.read_text().splitlines() if line.strip()]


def test_bundled_seed_set_loads_36_items_balanced_by_task_and_focus():
    items, _ = load()
    assert len(items) == 36
    assert Counter(i.groups["task"] for i in items) == {"abduction": 12, "revision": 12, "argument": 12}
    assert Counter(i.groups["task_focus"] for i in items) == {
        f"{task}/{focus}": 6 for task in ("abduction", "revision", "argument") for focus in ("core", "peripheral")}
    assert list(items[0].groups)[0] == "task"  # --limit round-robins over tasks
    first = items[0]
    assert first.prompt.startswith("Background knowledge:\n- Water boils at 100 °C at sea level.\n")
    assert "Observation: The thermometer shows 93 °C" in first.prompt and first.prompt.endswith("\nAnswer:")
    assert first.choices[0] == " The thermometer is miscalibrated and reads about seven degrees too low."
    assert first.labels == ("A", "B") and "\nA. The thermometer" in first.generate_prompt
    argument = next(i for i in items if i.groups["task"] == "argument")
    assert argument.rubric and argument.choices == () and "argument" in argument.prompt.lower()


def test_gold_preferring_model_scores_100_and_option_0_scores_the_share_of_gold_0(tmp_path):
    items, settings = load()
    summary, _, _ = evaluate(items, settings, FakeBackend("gold", gold_preferring(items)), tmp_path / "a.sqlite")
    assert summary["by"]["task"]["abduction"]["accuracy"] == 1.0
    assert summary["by"]["task"]["revision"]["accuracy"] == 1.0

    first, _, _ = evaluate(items, settings, FakeBackend("first", lambda r: [-1.0, -500.0]), tmp_path / "b.sqlite")
    for task in ("abduction", "revision"):
        golds = [i.gold for i in items if i.groups["task"] == task]
        assert first["by"]["task"][task]["accuracy"] == golds.count(0) / len(golds) == 0.5


def test_options_are_ranked_per_byte_not_by_raw_sum(tmp_path):
    row = seed_rows()[0]  # gold 0 revises the thermometer; make it the much longer option
    row["options"][0]["text"] = ("The thermometer is miscalibrated: it is an old, cheap instrument that has "
                                 "drifted and now reads about seven degrees too low.")
    row["options"][1]["text"] = "Water boils at 93 °C here."
    items, settings = load(write_jsonl(tmp_path / "long.jsonl", [row]))
    item = items[0]
    # A model that finds the gold text twice as likely per byte; summed over its many more bytes it loses.
    def scores(r: ChoiceRequest) -> list[float]:
        return [rate * len(c.encode()) for rate, c in zip((-1.0, -2.0), r.continuations, strict=True)]

    backend = FakeBackend("per-byte", scores)
    raw = backend.loglik([ChoiceRequest(item.prompt, item.choices)])[0]
    assert raw[1] > raw[0]  # the raw sum favours the short distractor

    _, per_byte, _ = evaluate(items, settings, backend, tmp_path / "a.sqlite")
    assert per_byte[0]["pred"] == 0 and per_byte[0]["correct"] == 1.0
    unnormalised = dataclasses.replace(spec(), normalize=False)
    _, summed, _ = evaluate(items, settings, backend, tmp_path / "b.sqlite", bench=unnormalised)
    assert summed[0]["pred"] == 1


def test_generate_mode_parses_the_answer_letter(tmp_path):
    items, settings = load(mode="generate")
    letters = {i.generate_prompt: "AB"[i.gold] for i in items if i.rubric is None}
    backend = FakeBackend("letters", answer=lambda r: f" {letters[r.prompt]}. Because ..." if r.prompt in letters
                          else "")
    summary, _, _ = evaluate(items, settings, backend, tmp_path / "c.sqlite")
    assert summary["by"]["task"]["abduction"]["accuracy"] == 1.0
    assert summary["by"]["task"]["revision"]["accuracy"] == 1.0
    assert summary["unparsed"] == 0


def test_keywords_judge_gives_the_fraction_of_rubric_points_made(tmp_path):
    items, settings = load()
    argument = next(i for i in items if i.id == "arg-001")  # altitude / air pressure / boiling point
    assert len(argument.rubric) == 3
    answer = (" The cabin must be at a high altitude, so water reaches its boiling point sooner there."
              "\nQuestion: Why is the sky blue? Lower air pressure ...")  # the model's next prompt is not judged
    backend = FakeBackend("writer", scores=lambda r: [0.0, -1.0], answer=lambda r: answer)
    _, results, _ = evaluate([argument], settings, backend, tmp_path / "d.sqlite")
    assert results[0]["correct"] == pytest.approx(2 / 3)

    broken = next(i for i in items if i.id == "arg-007")  # keywords broken, faulty, fault, ...
    whole_words = FakeBackend("words", answer=lambda r: " The kettle is brokenhearted; nothing is at faultless.")
    _, results, _ = evaluate([broken], settings, whole_words, tmp_path / "e.sqlite")
    assert results[0]["correct"] == 0.0


def test_judge_model_saying_yes_scores_1_and_is_cached(tmp_path):
    items, settings = load()
    settings.options = {"judge": "tiny-judge", "judge_backend": "fake"}
    arguments = [i for i in items if i.rubric is not None]
    built: list[tuple[str, str]] = []
    judge = FakeBackend("judge", answer=lambda r: " Yes, it does.")

    def backend_for(name: str, model: str) -> FakeBackend:
        built.append((name, model))
        return judge

    writer = FakeBackend("writer", answer=lambda r: " The thermometer is fine; the cabin is up a mountain.")
    summary, results, cache = evaluate(arguments, settings, writer, tmp_path / "j.sqlite", backend_for)
    assert built == [("fake", "tiny-judge")]
    assert [r["correct"] for r in results] == [1.0] * len(arguments)
    points = sum(len(i.rubric) for i in arguments)
    assert len(judge.generated) == points
    asked = [r.prompt for r in judge.generated]
    assert any("Does the argument make this point: The cabin is not at sea level" in p and
               "the cabin is up a mountain" in p and p.endswith("Answer yes or no.\nAnswer:") for p in asked)
    assert cache.computed == len(arguments) + points

    again, _, cache = evaluate(arguments, settings, writer, tmp_path / "j.sqlite", backend_for)
    assert cache.computed == 0 and len(judge.generated) == points
    assert again["accuracy"] == 1.0

    settings.options = {"judge": "strict-judge", "judge_backend": "fake"}  # one that always says no
    naysayer = FakeBackend("naysayer", answer=lambda r: "No.")
    nay, _, _ = evaluate(arguments, settings, writer, tmp_path / "j.sqlite", lambda name, model: naysayer)
    assert nay["accuracy"] == 0.0


def test_summary_splits_each_task_by_focus(tmp_path):
    items, settings = load()
    summary, _, _ = evaluate(items, settings, FakeBackend("gold", gold_preferring(items)), tmp_path / "f.sqlite")
    split = summary["by"]["task_focus"]
    assert set(split) == {f"{t}/{f}" for t in ("abduction", "revision", "argument") for f in ("core", "peripheral")}
    assert split["abduction/core"] == {"n": 6, "accuracy": 1.0}
    assert split["argument/peripheral"] == {"n": 6, "accuracy": 0.0}  # empty arguments make no point
    assert set(summary["by"]["focus"]) == {"core", "peripheral"}


def _missing_observation(row: dict) -> None:
    del row["observation"]


def _unknown_statement(row: dict) -> None:
    row["options"][1]["revises"] = "c9"


def _gold_out_of_range(row: dict) -> None:
    row["gold"] = 2


def _bad_task(row: dict) -> None:
    row["task"] = "deduction"


def _argument_without_rubric(row: dict) -> None:
    row.update(task="argument", id="arg-x")
    del row["options"], row["gold"]


@pytest.mark.parametrize(("break_it", "field", "says"), [
    (_missing_observation, "observation", "missing"),
    (_unknown_statement, "options[1].revises", "'c9' is not the id of a statement"),
    (_gold_out_of_range, "gold", "out of range"),
    (_bad_task, "task", "'deduction' is not one of abduction, revision, argument"),
    (_argument_without_rubric, "rubric", "missing"),
])
def test_malformed_items_fail_with_file_line_and_field(tmp_path, break_it, field, says):
    good, bad = seed_rows()[:2]
    bad = copy.deepcopy(bad)
    break_it(bad)
    data = write_jsonl(tmp_path / "bad.jsonl", [good, bad])
    result = run_cli("eval", "holism", "--data", str(data), "-o", str(tmp_path / "run"), timeout=60)
    assert result.returncode == 2, result.stderr
    first = result.stderr.strip().splitlines()[0]
    assert f"{data}:2: field '{field}'" in first and says in first, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # it failed before a model or run directory


def test_duplicate_ids_are_rejected(tmp_path):
    rows = seed_rows()[:3]
    rows[2]["id"] = rows[0]["id"]
    data = write_jsonl(tmp_path / "dup.jsonl", rows)
    result = run_cli("eval", "holism", "--data", str(data), timeout=60)
    assert result.returncode == 2
    assert f"{data}:3: field 'id': duplicate id 'abd-001'" in result.stderr and f"{data}:1" in result.stderr


@pytest.mark.slow
def test_cli_with_a_judge_model_scores_arguments_and_caches_the_judge(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ("eval", "holism", "--model", "tiny-llama", "--judge", "tiny-llama", "--limit", "6", "--max-new-tokens", "6",
            "--log-samples", "--json", "-o", str(run))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["n"] == 6 and set(summary["by"]["task"]) == {"abduction", "revision", "argument"}
    assert any(key.startswith("argument/") for key in summary["by"]["task_focus"])
    argument = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()
                if json.loads(line)["groups"]["task"] == "argument"]
    assert argument and all(0.0 <= row["correct"] <= 1.0 for row in argument)
    again = json.loads(run_cli(*args).stdout)
    assert again["new_answers"] == 0 and again["accuracy"] == summary["accuracy"]  # judge verdicts come cached too
