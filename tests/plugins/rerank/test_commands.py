"""The reranking commands end to end on a small corpus: train-reranker (ensemble + SWA), rerank, calibrate, explain,
`--rerank` on search and eval, and the messages of malformed input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from lmlab.cli.app import main
from lmlab.plugins.rerank.bayes import read_info
from tests.conftest import write_jsonl
from tests.plugins.rerank.conftest import tiny_encoder

TINY = ["--max-length", "64", "--batch-size", "8", "--save-every", "100"]


def lmlab(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def json_of(out: str) -> dict[str, Any]:
    return json.loads(out)


@pytest.fixture(scope="module")
def trained(rerank_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny random encoder trained for 6 steps as 2 members with SWA over steps 4 and 6."""
    root = tmp_path_factory.mktemp("trained")
    encoder = tiny_encoder(root / "encoder")
    run = root / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["retrieve", "train-reranker", "--model", str(encoder), "--index", str(rerank_files["index"]),
              "--data", str(rerank_files["train"]), "--eval-data", str(rerank_files["heldout"]), "--members", "2",
              "--max-steps", "6", "--swa-window", "3", "--swa-every", "2", "--lr", "1e-3", *TINY, "-o", str(run),
              "--json", "--quiet"])
    assert exit_info.value.code in (0, None)
    return {"run": run, "model": run / "model", "encoder": encoder}


def test_train_reranker_writes_members_swa_and_records_itself(trained: dict[str, Any],
                                                              rerank_files: dict[str, Path]) -> None:
    info = read_info(trained["model"])
    assert info["kind"] == "cross-encoder" and info["members"] == ["member-0", "member-1"]
    assert info["swa"] == "swa" and info["default_variant"] == "ensemble"
    snapshots = sorted(p.name for p in (trained["run"] / "swa-checkpoints").glob("*.safetensors"))
    assert snapshots == ["step-000004.safetensors", "step-000006.safetensors"]
    swa = load_file(trained["model"] / "swa" / "model.safetensors")
    steps = [load_file(trained["run"] / "swa-checkpoints" / name) for name in snapshots]
    for name, value in swa.items():  # SWA = the mean of the checkpoints of the window
        if value.is_floating_point():
            assert (value - (steps[0][name] + steps[1][name]) / 2).abs().max() < 1e-6, name
    member0 = load_file(trained["model"] / "member-0" / "model.safetensors")
    member1 = load_file(trained["model"] / "member-1" / "model.safetensors")
    assert not (member0["classifier.weight"] == member1["classifier.weight"]).all()  # own init and data order
    index = json.loads((rerank_files["index"] / "index.json").read_text())
    assert index["reranker"] == str(trained["model"].resolve())
    summary = json.loads((trained["run"] / "summary.json").read_text())
    assert summary["pairs"] > 0 and summary["members"] == 2 and "heldout_after" in summary
    metrics = [json.loads(line) for line in (trained["run"] / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    for m in metrics:  # the default loss: the classifier's BCE plus the listwise term, each averaged over members
        assert m["listwise"] > 0 and m["bce"] > 0 and abs(m["loss"] - m["bce"] - m["listwise"]) < 1e-4


def test_rerank_gives_probability_and_uncertainty(trained: dict[str, Any], rerank_files: dict[str, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = lmlab("retrieve", "rerank", "--index", str(rerank_files["index"]), "--data",
                         str(rerank_files["heldout"]), "--top-k", "3", "--rerank-depth", "5", "--json",
                         capsys=capsys)
    assert code == 0
    summary = json_of(out)
    assert summary["variant"] == "ensemble" and summary["queries"] == 6
    assert "recall@1" in summary["before"] and "recall@1" in summary["after"]
    for row in summary["results"]:
        scores = [hit["score"] for hit in row["results"]]
        assert scores == sorted(scores, reverse=True) and 1 <= len(scores) <= 3  # BM25 leaves out 0 scores
        for hit in row["results"]:
            assert 0 <= hit["probability"] <= 1 and hit["uncertainty"] > 0 and hit["score"] == hit["probability"]
            assert 1 <= hit["retriever_rank"] <= 5


def test_rerank_a_search_output_and_the_explanation_score(trained: dict[str, Any], rerank_files: dict[str, Path],
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    found = tmp_path / "found.jsonl"
    code, _, _ = lmlab("retrieve", "search", "--index", str(rerank_files["index"]), "-r", "bm25", "--query",
                       "closest planet to the sun", "--top-k", "4", "--output", str(found), capsys=capsys)
    assert code == 0
    code, out, _ = lmlab("retrieve", "rerank", "--index", str(rerank_files["index"]), "--candidates", str(found),
                         "--model", str(trained["run"]), "--variant", "plain", "--explain-weight", "0.5",
                         "--explain-depth", "2", "--explain-samples", "16", "--json", capsys=capsys)
    assert code == 0
    hits = json_of(out)["results"][0]["results"]
    explained = [h for h in hits if "explanation" in h]
    assert len(explained) == 2 and hits[:2] == explained  # the reranker's best 2, reordered among themselves
    for hit in explained:
        assert hit["score"] == pytest.approx(hit["probability"] + 0.5 * hit["explanation"], abs=2e-6)
    assert all(h["uncertainty"] == 0 for h in hits)  # plain: one deterministic pass


def test_calibrate_compares_every_variant_and_fits_temperatures(trained: dict[str, Any],
                                                                rerank_files: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = lmlab("retrieve", "calibrate", "--index", str(rerank_files["index"]), "--data",
                         str(rerank_files["train"]), "--model", str(trained["model"]), "--fit-temperature",
                         "--mc-passes", "3", "-o", str(tmp_path / "cal"), "--json", capsys=capsys)
    assert code == 0
    summary = json_of(out)
    assert set(summary["results"]) == {"plain", "ensemble", "mc-dropout", "swa"}
    for values in summary["results"].values():
        assert 0 <= values["ece_width"] <= 1 and 0 <= values["ece_mass"] <= 1 and values["temperature"] > 0
        assert values["scaled"]["nll"] <= values["nll"] + 0.05  # fitted on other queries: about as good or better
    assert (tmp_path / "cal" / "reliability.png").stat().st_size > 1000
    saved = read_info(trained["model"])["temperatures"]
    assert set(saved) == set(summary["results"])


def test_explain_writes_json_and_html_views(trained: dict[str, Any], rerank_files: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = lmlab("retrieve", "explain", "--index", str(rerank_files["index"]), "--model",
                         str(trained["model"]), "--query", "closest planet to the sun", "--explain-samples", "24", "-o",
                         str(tmp_path / "ex"), "--json", capsys=capsys)
    assert code == 0
    summary = json_of(out)
    assert summary["context"].startswith("Mercury (planet).")  # the query's best BM25 page
    for method in ("lime", "shap"):
        found = summary["methods"][method]
        assert len(found["words"]) == len(found["importances"]) == len(summary["context"].split())
        assert Path(found["html"]).is_file()
    assert json.loads((tmp_path / "ex" / "explanation.json").read_text())["query"] == "closest planet to the sun"


def test_eval_reports_the_ablation(trained: dict[str, Any], rerank_files: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = lmlab("retrieve", "eval", "--index", str(rerank_files["index"]), "--data",
                         str(rerank_files["heldout"]), "-r", "bm25", "--rerank", "last", "--mc-passes", "2",
                         "--rerank-depth", "4", "--explain-weight", "0.1", "--explainer", "lime",
                         "--explain-samples", "16", "--explain-depth", "2", "-o", str(tmp_path / "ev"), "--json",
                         capsys=capsys)
    assert code == 0
    results = json_of(out)["results"]
    assert list(results) == ["bm25", "bm25 + plain", "bm25 + ensemble", "bm25 + mc-dropout", "bm25 + swa",
                             "bm25 + ensemble + explain λ=0.1"]
    for name, values in results.items():  # reranking the top 4 cannot change what recall@10 finds
        assert values["recall@10"] == results["bm25"]["recall@10"], name


def test_search_with_rerank(trained: dict[str, Any], rerank_files: dict[str, Path],
                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = lmlab("retrieve", "search", "--index", str(rerank_files["index"]), "-r", "bm25", "--query",
                         "bowed instrument held between the knees", "--rerank", "last", "--variant", "swa",
                         "--top-k", "3", "--json", capsys=capsys)
    assert code == 0
    summary = json_of(out)
    hits = summary["results"][0]["results"]
    assert summary["retriever"] == "bm25 + rerank last" and {h["title"] for h in hits} == {"Violin", "Cello"}


@pytest.mark.parametrize(("args", "expected"), [
    (["train-reranker", "--bayes", "deep"], "Unknown --bayes 'deep'"),
    (["train-reranker", "--loss", "hinge"], "Unknown --loss 'hinge'"),
    (["train-reranker", "--members", "1"], "An ensemble needs 2 or more members"),
    (["train-reranker", "--max-steps", "5", "--swa-window", "9"], "--swa-window 9 is longer than the run"),
    (["rerank", "--model", "nowhere"], "'nowhere' is neither a reranker folder"),
    (["rerank", "--retriever", "nosuch"], "Unknown retriever 'nosuch'"),
    (["explain", "--explainer", "grad"], "Unknown --explainer 'grad'"),
])
def test_bad_options_exit_2(args: list[str], expected: str, rerank_files: dict[str, Path],
                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = lmlab("retrieve", *args, "--index", str(rerank_files["index"]), capsys=capsys)
    assert code == 2 and expected in " ".join(err.split())


def test_malformed_rows_name_file_line_and_field(trained: dict[str, Any], rerank_files: dict[str, Path],
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "q", "context": "c", "label": 1},
                                                    {"query": "q", "context": "c", "label": 3}])
    code, _, err = lmlab("retrieve", "train-reranker", "--index", str(rerank_files["index"]), "--data", str(pairs),
                         "--model", str(trained["encoder"]), "-o", str(tmp_path / "run"), capsys=capsys)
    assert code == 2 and "pairs.jsonl:2: field 'label': is 3, not 0 or 1" in err
    found = write_jsonl(tmp_path / "found.jsonl", [{"id": "x", "input": "q", "results": [{"id": "999"}]}])
    code, _, err = lmlab("retrieve", "rerank", "--index", str(rerank_files["index"]), "--candidates", str(found),
                         capsys=capsys)
    assert code == 2 and "found.jsonl:1: field 'results[0].id'" in err
    code, _, err = lmlab("retrieve", "rerank", "--index", str(rerank_files["index"]), "--model",
                         str(trained["model"]), "--variant", "bayes", capsys=capsys)
    assert code == 2 and "Unknown --variant 'bayes'" in err


def word_pairs(per_page: int, seed: int) -> list[dict[str, Any]]:
    """Queries of two words from a page's text: that page is relevant, two other pages are not."""
    import random

    from tests.plugins.retrieve.conftest import DOCS

    rng, rows = random.Random(seed), []
    for i, (page, title, text) in enumerate(DOCS):
        words = sorted({w.strip(".,;").lower() for w in text.split() if len(w.strip(".,;")) > 4})
        for n in range(per_page):
            query, qid = " ".join(rng.sample(words, 2)), f"{page}-{seed}-{n}"
            others = rng.sample([d for j, d in enumerate(DOCS) if j != i], 2)
            rows += [{"query": query, "query_id": qid, "context": f"{title}. {text}", "label": 1}]
            rows += [{"query": query, "query_id": qid, "context": f"{t}. {x}", "label": 0} for _, t, x in others]
    return rows


def test_training_beats_the_untrained_reranker_on_heldout_pairs(rerank_files: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", word_pairs(4, seed=1))
    heldout = write_jsonl(tmp_path / "heldout.jsonl", word_pairs(2, seed=2))  # other word pairs
    code, out, _ = lmlab("retrieve", "train-reranker", "--index", str(rerank_files["index"]), "--data", str(train),
                         "--eval-data", str(heldout), "--bayes", "mc-dropout", "--members", "1", "--max-steps", "40",
                         "--batch-size", "16", "--max-length", "64", "-o", str(tmp_path / "run"), "--json", "--quiet",
                         capsys=capsys)
    assert code == 0
    summary = json_of(out)
    before, after = summary["heldout_before"], summary["heldout_after"]
    assert summary["heldout_pairs"] == 60
    assert after["auc"] >= before["auc"] + 0.2 and after["auc"] >= 0.75
    assert after["loss"] < before["loss"] and after["accuracy"] > before["accuracy"]


def test_the_commands_join_the_retrieve_group_with_or_without_the_retrieve_plugin() -> None:
    from tests.conftest import run_cli

    alone = run_cli("retrieve", "--help", env={"LMLAB_PLUGINS": "rerank", "COLUMNS": "200"})
    assert alone.returncode == 0 and "train-reranker" in alone.stdout and "index" not in alone.stdout.split()
    both = run_cli("retrieve", "--help", env={"COLUMNS": "200"})
    assert both.returncode == 0 and "train-reranker" in both.stdout and "Sparse, dense and generative" in both.stdout


def test_own_data_without_eval_data_holds_out_whole_queries(rerank_files: dict[str, Path]) -> None:
    from lmlab.plugins.rerank.train import LabelledPair, split_by_query

    pairs = [LabelledPair(f"q{i}", f"query {i}", f"context {j}", int(j == 0)) for i in range(20) for j in range(4)]
    train, held = split_by_query(pairs, 0.1, seed=0)
    held_queries = {p.query_id for p in held}
    assert len(held_queries) == 2 and len(held) == 8  # every pair of 10 % of the queries
    assert not held_queries & {p.query_id for p in train} and len(train) + len(held) == len(pairs)
    assert split_by_query(pairs, 0.1, seed=0) == (train, held) and split_by_query(pairs, 0.1, seed=1)[1] != held
    assert split_by_query(pairs, 0.0, seed=0) == (pairs, [])
    assert len({p.query_id for p in split_by_query(pairs[:8], 0.5, seed=0)[0]}) == 1  # never every query
