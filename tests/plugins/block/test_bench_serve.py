"""`lmlab bench serve`: bad options refused with exit 2, and a tiny end-to-end run of both models in both batching
modes over real HTTP (figures are never judged here: a benchmark is not a test)."""

from __future__ import annotations

import json

import pytest

from lmlab.core.bench.http_load import percentile
from lmlab.plugins.block.bench_serve import BENCHMARK, MODES
from tests.conftest import refused, run_cli

TINY = ("--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "64", "--vocab-size", "512",
        "--prompt-tokens", "16", "--max-new-tokens", "8", "--concurrency-levels", "1,4", "--requests", "6",
        "--max-seconds", "0.5", "--batch-size", "8")


@pytest.mark.parametrize(("args", "message"), [
    (("--concurrency-levels", "0"), "--concurrency-levels must be comma-separated whole numbers of 1 or more, got "
                                     "'0'."),
    (("--concurrency-levels", "1,abc"),
     "--concurrency-levels must be comma-separated whole numbers of 1 or more, got '1,abc'."),
    (("--requests", "10"), "--requests 10 is below the largest --concurrency-levels 200"),
    (("--block-size", "66"), "--block-size 66 must be a multiple of --block-len 4"),
    (("--systems", "vllm"), "Unknown --systems value(s): vllm."),
])
def test_bad_options_are_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                                               message: str) -> None:
    err = refused(capsys, "bench", "serve", *args)
    assert message in err and err.startswith("error:") and "bench serve:" not in err  # nothing ran


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.99) == 99.0 and percentile([7.0], 0.99) == 7.0


@pytest.mark.slow
def test_tiny_bench_serves_every_level_without_errors_and_batches_concurrent_requests() -> None:
    result = run_cli("bench", "serve", *TINY, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"benchmark", "machine", "settings", "results", "ratios"}
    assert report["benchmark"] == "serve" and set(report["results"]) == set(BENCHMARK.systems)
    assert {"cpu", "cores", "torch", "threads"} <= set(report["machine"])
    assert report["settings"]["concurrency"] == [1, 4] and report["settings"]["modes"] == {"batch1": 1, "dynamic": 8}
    for system, r in report["results"].items():
        assert r["parameters"] > 0
        for mode in MODES:
            served = r[mode]
            assert served["server_exit_code"] == 0, (system, mode)
            assert served["warmup"]["errors"] == served["warmup"]["dropped"] == 0
            assert set(served["levels"]) == {"c1", "c4"}
            for key, level in served["levels"].items():
                assert level["errors"] == level["dropped"] == 0, (system, mode, key, level.get("first_error"))
                assert level["ok"] == level["requests"] >= level["concurrency"]
                assert level["generated_tokens"] == level["server_generated_tokens"] > 0
                assert level["p50_ms"] <= level["p99_ms"] and level["requests_per_s"] > 0
            assert served["levels"]["c1"]["mean_batch_size"] == 1.0
        assert r["batch1"]["levels"]["c4"]["max_batch_size_seen"] == 1
        assert r["dynamic"]["levels"]["c4"]["mean_batch_size"] > 1, system
    ratios = report["ratios"]
    assert ratios["errors_c4"] == ratios["dropped_c4"] == 0
    assert {"requests_per_s_dynamic_vs_batch1_c4_block", "requests_per_s_dynamic_vs_batch1_c4_vanilla",
            "requests_per_s_block_vs_vanilla_c4_dynamic", "requests_per_s_block_vs_vanilla_c1_batch1"} <= set(ratios)
