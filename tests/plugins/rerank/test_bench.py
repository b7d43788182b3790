"""`lmlab bench rerank`: the report's shape and checks at toy size, in-process (no timings are asserted: benchmarks
are not tests): ours and CrossEncoder give the same logits, every system's figures are there, quality needs a trained
folder, and a bad --systems is refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmlab.cli.app import main
from tests.conftest import refused
from tests.plugins.rerank.conftest import tiny_encoder

TINY = ("--documents", "60", "--queries", "6", "--depth", "4", "--repeats", "1", "--explain-pairs", "1",
        "--explain-samples", "16", "--max-length", "64", "--json")


def _in_process(entry: str, system: str, settings: dict[str, Any], **_: Any) -> dict[str, Any]:
    """core.bench's worker, run in this process (each subprocess would import torch and transformers again); the
    result goes through JSON as it would from a worker."""
    from lmlab.plugins.rerank.bench import run_system

    assert entry == "lmlab.plugins.rerank.bench:run_system"
    return {**json.loads(json.dumps(run_system(system, settings))), "other_processes_cpu_share": None}


def _bench(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    monkeypatch.setattr("lmlab.core.bench.benchmark.run_measured", _in_process)
    with pytest.raises(SystemExit) as exited:
        main(["bench", "rerank", *TINY, *args])
    assert exited.value.code == 0
    return json.loads(capsys.readouterr().out)


def test_bench_rerank_json_report(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    report = _bench(monkeypatch, capsys, "--mc-passes", "2", "--members", "2")
    assert set(report) == {"benchmark", "machine", "settings", "results", "ratios"}
    assert report["benchmark"] == "rerank" and report["machine"]["cores"]
    settings, results, ratios = report["settings"], report["results"], report["ratios"]
    assert settings["pairs"] == 6 * 4 and settings["queries_with_fewer_than_depth_pairs"] == 0
    assert settings["trained"] is False and settings["members"] == 2 and settings["max_length"] == 64
    assert {"ours", "cross-encoder", "ours-bf16", "bayes-plain", "bayes-mc-dropout", "bayes-ensemble",
            "explain-lime", "explain-shap", "quality"} == set(results)
    assert "--model" in results["quality"]["skipped"]
    assert not any(key.startswith(("recall@1", "ece_")) for key in ratios)
    for name in ("ours", "cross-encoder"):
        figures = results[name]
        assert "logits" not in figures  # the parent compared and dropped them
        assert figures["pairs"] == 24 and figures["pairs_per_s"] > 0 and figures["batches"] == 1
        assert figures["real_tokens"] <= figures["padded_tokens"] <= 24 * 64 and 0 <= figures["padding_share"] < 1
        assert figures["gemm_peak_gflops"] > 0 and figures["gemm_share"] > 0
    assert settings["checks"]["max_abs_logit_diff"] <= 1e-5 and ratios["max_abs_logit_diff"] <= 1e-5
    assert results["ours"]["max_abs_logit_diff"] == ratios["max_abs_logit_diff"]
    assert ratios["pairs_per_s_ours_vs_cross_encoder"] > 0
    if "skipped" not in results["ours-bf16"]:  # a CPU with native bf16
        assert 0 < ratios["max_abs_logit_diff_bf16_vs_fp32"] < 0.1 and ratios["pairs_per_s_ours_bf16_vs_ours"] > 0
        assert 0 <= settings["checks"]["bf16_same_top1_share"] <= 1
    plain, mc, ensemble = (results[f"bayes-{v}"] for v in ("plain", "mc-dropout", "ensemble"))
    assert plain["vs_one_pass"] == 1.0 and plain["mean_std"] == 0.0 and plain["pairs"] == 24
    assert mc["forward_passes"] == 2 and ensemble["forward_passes"] == 2
    assert mc["mean_std"] > 0 and ensemble["mean_std"] > 0  # dropout passes and members do disagree
    assert ratios["seconds_mc_dropout_vs_one_pass"] == mc["vs_one_pass"] > 0
    assert mc["per_pass_vs_one_pass"] == pytest.approx(mc["vs_one_pass"] / 2, abs=1e-3)
    for method in ("lime", "shap"):
        figures = results[f"explain-{method}"]
        assert figures["explanations"] == 1 and figures["explanations_per_s"] > 0
        assert figures["samples_per_explanation"] >= 16  # --explain-samples is a floor
        assert figures["texts_scored_per_explanation"] >= 2  # at least the context and the empty one


def _trained_folder(folder: Path) -> Path:
    """A `retrieve train-reranker` model folder's layout: two tiny random members and reranker.json."""
    from lmlab.plugins.rerank.bayes import KIND, write_info

    for m in range(2):
        tiny_encoder(folder / f"member-{m}", seed=m)
    write_info(folder, {"kind": KIND, "members": ["member-0", "member-1"], "swa": None, "default_variant": "ensemble",
                        "max_length": 64, "mc_passes": 2, "dropout": 0.1, "encoder": "tiny", "temperatures": {}})
    return folder


def test_bench_rerank_quality_with_a_trained_folder(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    _trained_folder(run / "model")
    report = _bench(monkeypatch, capsys, "--model", str(run), "--systems", "bayes,quality", "--mc-passes", "2",
                    "--bayes-pairs", "8")
    settings, results, ratios = report["settings"], report["results"], report["ratios"]
    assert settings["trained"] is True and settings["reranker"] == str(run / "model")
    assert settings["members"] == 2 and results["bayes-ensemble"]["forward_passes"] == 2  # the folder's own members
    assert set(results) == {"bayes-plain", "bayes-mc-dropout", "bayes-ensemble", "bm25", "bm25+plain",
                            "bm25+ensemble", "bm25+mc-dropout"}
    assert settings["bayes_pairs"] == 8 and all(results[f"bayes-{v}"]["pairs"] == 8
                                                for v in ("plain", "mc-dropout", "ensemble"))
    assert results["bm25"]["pairs"] == 24
    for name in ("bm25", "bm25+plain", "bm25+ensemble", "bm25+mc-dropout"):
        figures = results[name]
        assert figures["queries"] == 6 and 0 <= figures["recall@1"] <= figures["recall@5"] <= 1
        assert 0 < figures["mrr"] <= 1
    for variant in ("plain", "ensemble", "mc-dropout"):
        figures = results[f"bm25+{variant}"]
        assert figures["pairs"] == 24 and 0 <= figures["ece_width"] <= 1 and 0 <= figures["ece_mass"] <= 1
        assert ratios[f"ece_width_{variant}"] == figures["ece_width"]
        assert figures["recall@5"] == results["bm25"]["recall@5"]  # the same top 4, reordered
    best = max(results[f"bm25+{v}"]["recall@1"] for v in ("plain", "ensemble", "mc-dropout"))
    if results["bm25"]["recall@1"] > 0:
        assert ratios["recall@1_rerank_vs_bm25"] == round(best / results["bm25"]["recall@1"], 3)


@pytest.mark.parametrize(("args", "message"), [
    (("--systems", "vllm"), "Unknown --systems value(s): vllm."),
    (("--model", "/nonexistent/reranker"), "no reranker.json there"),
])
def test_bad_options_are_exit_2_before_anything_runs(capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                                                     message: str) -> None:
    err = refused(capsys, "bench", "rerank", *args)
    assert message in err and "bench rerank: building" not in err and "bench rerank: running" not in err
