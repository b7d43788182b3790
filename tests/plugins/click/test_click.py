"""CLIcK: the official layout loads, the paper's prompt shows every option (E too), scoring and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.core.evaluation.request_cache import RequestCache
from lmlab.core.evaluation.scoring import EvalContext, EvalSettings, benchmarks, score_items, summarize
from lmlab.core.files.records import example
from lmlab.plugins.click.data import load_click
from tests.conftest import run_cli

FILES = {
    "Culture/Korean History/History_Kedu.json": [
        {"id": "Kedu_history_1", "paragraph": "", "question": "조선을 세운 사람은?",
         "choices": ["왕건", "이성계", "궁예", "견훤"], "answer": "이성계"},
        {"id": "Kedu_history_2", "paragraph": "", "question": "한글을 만든 왕은?",
         "choices": ["세종", "태조", "정조", "영조"], "answer": "세종"},
    ],
    "Culture/Korean Geography/Geography_CSAT.json": [
        {"id": "CSAT_geo_1", "paragraph": "", "question": "한국에서 가장 높은 산은?",
         "choices": ["설악산", "지리산", "한라산", "북한산", "백두산"], "answer": "백두산"},
    ],
    "Language/Textual/Textual_TOPIK.json": [
        {"id": "TK_1", "paragraph": "민수는 아침마다 공원에서 달린다.", "question": "민수는 아침마다 무엇을 하는가?",
         "choices": ["달리기", "수영", "독서", "요리"], "answer": "달리기"},
    ],
}


def write_click(root: Path, files: dict = FILES) -> Path:
    for relative, items in files.items():
        path = root / "Dataset" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(items, ensure_ascii=False, indent=4))
    return root


class Answering:
    """Answers a fixed letter, or the gold one when `gold` maps prompts to letters."""

    def __init__(self, letter: str | None = None, gold: dict[str, int] | None = None) -> None:
        self.identity, self.letter, self.gold = f"fake:{letter}", letter, gold or {}

    def loglik(self, requests):
        out = []
        for r in requests:
            want = self.gold[r.context] if self.letter is None else [c.strip() for c in r.continuations].index(
                self.letter)
            out.append([0.0 if i == want else -5.0 for i in range(len(r.continuations))])
        return out


def evaluate(tmp_path: Path, backend, data: Path) -> dict:
    spec = benchmarks()["click"]
    items = spec.load(str(data), EvalSettings()).items
    ctx = EvalContext(EvalSettings(), RequestCache(tmp_path / "c.sqlite"), lambda *a: None)
    return summarize(spec, score_items(spec, items, backend, ctx))


def test_layout_groups_and_the_five_choice_prompt(tmp_path: Path) -> None:
    items = load_click(str(write_click(tmp_path)), EvalSettings()).items
    assert [i.groups["category"] for i in items] == ["Geography", "History", "History", "Textual"]
    assert {i.groups["group"] for i in items} == {"Culture", "Language"}
    five = items[0]
    assert five.choices == (" A", " B", " C", " D", " E") and five.gold == 4
    assert "A, B, C, D, E 중에" in five.prompt and "E: 백두산" in five.prompt and five.prompt.endswith("정답:")
    assert "맥락: 민수는" in items[3].prompt and "맥락" not in items[1].prompt
    assert items[1].prompt.count("A:왕건, B: 이성계, C: 궁예, D: 견훤") == 1


def test_always_right_scores_100_and_a_fixed_letter_scores_the_gold_share(tmp_path: Path) -> None:
    data = write_click(tmp_path)
    items = load_click(str(data), EvalSettings()).items
    right = evaluate(tmp_path / "r", Answering(gold={i.prompt: i.gold for i in items}), data)
    assert right["accuracy"] == 1.0 and right["by"]["group"]["Culture"]["n"] == 3
    always_a = evaluate(tmp_path / "a", Answering("A"), data)
    assert always_a["accuracy"] == pytest.approx(sum(i.gold == 0 for i in items) / len(items))
    assert always_a["by"]["category"]["History"]["accuracy"] == 0.5
    last = evaluate(tmp_path / "e", Answering(gold={i.prompt: len(i.choices) - 1 for i in items}), data)
    assert last["by"]["category"]["Geography"]["accuracy"] == 1.0  # E is a real, scorable option


def test_fewshot_examples_come_from_the_same_category(tmp_path: Path) -> None:
    items = load_click(str(write_click(tmp_path)), EvalSettings(num_fewshot=1)).items
    history = [i for i in items if i.groups["category"] == "History"]
    assert history[0].prompt.count("정답:") == 2 and "한글을 만든 왕은?" in history[0].prompt
    assert "정답: A\n\n" in history[0].prompt  # the example is answered


def test_bundled_examples_load() -> None:
    items = load_click(str(example("eval/click")), EvalSettings()).items
    assert len(items) == 33 and len({i.groups["category"] for i in items}) == 11
    assert sum(len(i.choices) == 5 for i in items) >= 4


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda rows: rows[0].update(answer="없음"), "field 'answer'"),
    (lambda rows: rows[0].pop("question"), "field 'question'"),
    (lambda rows: rows[0].update(choices=["하나"]), "field 'choices'"),
])
def test_malformed_items_exit_2_naming_file_item_and_field(tmp_path: Path, mutate, needle: str) -> None:
    files = json.loads(json.dumps(FILES))
    mutate(files["Culture/Korean History/History_Kedu.json"])
    data = write_click(tmp_path, files)
    result = run_cli("eval", "click", "--data", str(data), "-o", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "History_Kedu.json:1:" in result.stderr and needle in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_json_and_wrong_layout_exit_2(tmp_path: Path) -> None:
    data = write_click(tmp_path / "d")
    (data / "Dataset/Culture/Korean History/History_Kedu.json").write_text('[{"id": "x",')
    result = run_cli("eval", "click", "--data", str(data))
    assert result.returncode == 2 and "History_Kedu.json" in result.stderr and "not valid JSON" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run_cli("eval", "click", "--data", str(tmp_path / "empty"))
    assert result.returncode == 2 and "Culture/ or Language/" in result.stderr


@pytest.mark.slow
def test_cli_run_writes_results_and_resumes_from_the_cache(tmp_path: Path) -> None:
    data, run = write_click(tmp_path / "d"), tmp_path / "run"
    args = ("eval", "click", "--data", str(data), "--model", "tiny-llama", "-o", str(run), "--json", "--log-samples")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["n"] == 4 and summary["new_answers"] == 4 and set(summary["by"]) == {"category", "group", "source"}
    assert (run / "accuracy.png").stat().st_size > 0 and (run / "results.json").exists()
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(len(s["loglik"]) == len(s["choices"]) for s in samples)
    again = json.loads(run_cli(*args).stdout)
    assert again["new_answers"] == 0 and again["cached_answers"] == 4 and again["accuracy"] == summary["accuracy"]
    resumed = run_cli("eval", "click", "--resume", str(run), "--json")
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["new_answers"] == 0


def test_a_saved_hub_copy_loads_with_categories_from_ids(tmp_path: Path) -> None:
    from datasets import Dataset

    rows = [item for items in FILES.values() for item in items]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    items = load_click(str(tmp_path / "saved"), EvalSettings()).items
    assert len(items) == 4 and items[0].groups == {"category": "History", "group": "Culture", "source": "Kedu"}
    assert items[2].choices[-1] == " E" and items[3].groups["group"] == "Language"


def test_a_missing_folder_or_model_is_exit_2_and_leaves_no_run_directory(tmp_path: Path) -> None:
    missing = run_cli("eval", "click", "--data", str(tmp_path / "nowhere"), "-o", str(tmp_path / "a"))
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr
    assert "Dataset/{Culture,Language}" in missing.stderr
    bad_model = run_cli("eval", "click", "--model", "no-such-model", "-o", str(tmp_path / "b"))
    assert bad_model.returncode == 2 and "Unknown model 'no-such-model'" in bad_model.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
