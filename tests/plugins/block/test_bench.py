"""`lmlab bench block`: bad options refused with exit 2, the report's ratios, and a tiny end-to-end run of every
system (figures are never judged here: a benchmark is not a test)."""

from __future__ import annotations

import json
import math
from importlib import util

import pytest

from lmlab.core.bench.benchmark import ratio_values
from lmlab.plugins.block.bench import BENCHMARK, SETTINGS, SYSTEMS, _finish, _ratios
from tests.conftest import refused, run_cli

TINY = ("--batch-size", "2", "--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--prefill-heavy-prompt", "8",
        "--prefill-heavy-max-new-tokens", "8", "--decode-heavy-prompt", "8", "--decode-heavy-max-new-tokens", "8",
        "--runs", "1", "--train-steps", "2")


@pytest.mark.parametrize(("args", "message"), [
    (("--block-len", "3"), "--block-len must be one of 1, 2, 4, 8, got 3."),
    (("--n-embd", "250", "--n-head", "4"), "--n-embd 250 is not divisible by --n-head 4."),
    (("--n-embd", "36", "--n-head", "2", "--block-len", "8"), "--n-embd 36 is not divisible by --block-len 8"),
    (("--systems", "vllm"), "Unknown --systems value(s): vllm."),
])
def test_bad_options_are_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                                               message: str) -> None:
    err = refused(capsys, "bench", "block", *args)
    assert message in err and err.startswith("error:") and "bench block: running" not in err  # nothing ran


def _result(tokens_per_s: float, kv: int, per_layer: int, **extra: float) -> dict:
    return {**{name: {"tokens_per_s": tokens_per_s, "kv_bytes_per_sequence": kv, "kv_bytes_per_layer": per_layer,
                      "prompts_sha256": "same"} for name in SETTINGS}, **extra}


def test_ratios_separate_the_architecture_gain_from_the_implementation_gain() -> None:
    results = {"block": _result(1000.0, 1_000, 100, val_ppl=105.0),
               "vanilla": _result(400.0, 8_000, 400, val_ppl=100.0), "hf-gptneox": _result(100.0, 8_000, 400)}
    _finish({"train_steps": 0}, results)
    ratios = ratio_values(_ratios({"block_len": 4}), results)
    for name in SETTINGS:
        assert results["hf-gptneox"][name]["same_prompts_as_others"]
        assert ratios[f"tokens_per_s_block_vs_hf_{name}"] == 10.0
        assert ratios[f"tokens_per_s_vanilla_vs_hf_{name}"] == 4.0  # implementation gain
        assert ratios[f"tokens_per_s_block_vs_vanilla_{name}"] == 2.5  # architecture gain
        assert ratios[f"kv_bytes_vanilla_vs_block_{name}"] == 8.0
        assert ratios[f"kv_bytes_per_layer_vanilla_vs_block_{name}"] == 4.0
    assert ratios["val_ppl_block_vs_vanilla"] == 1.05
    assert set(BENCHMARK.targets({"block_len": 4})) >= {"tokens_per_s_block_vs_hf_decode_heavy",
                                                        "val_ppl_block_vs_vanilla",
                                                        "kv_bytes_per_layer_vanilla_vs_block_decode_heavy"}
    skipped = ratio_values(_ratios({"block_len": 4}), {"block": results["block"], "vanilla": results["vanilla"],
                                                        "hf-gptneox": {"skipped": "x"}})
    assert "tokens_per_s_block_vs_hf_decode_heavy" not in skipped and "val_ppl_block_vs_vanilla" in skipped


@pytest.mark.slow
def test_tiny_bench_runs_every_system_on_the_same_prompts() -> None:
    result = run_cli("bench", "block", *TINY, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["benchmark"] == "block" and set(report["results"]) == set(SYSTEMS)
    assert {"cpu", "cores", "torch", "transformers"} <= set(report["machine"])
    s, results = report["settings"], report["results"]
    assert s["timed_runs"] == 1 and s["train_steps"] == 2 and s["context"] == 16
    hf = results["hf-gptneox"]
    if util.find_spec("transformers") is None:
        assert "transformers" in hf["skipped"]
    measured = {name: r for name, r in results.items() if "skipped" not in r}
    assert set(measured) >= {"block", "vanilla"} and (len(measured) == 3) == ("skipped" not in hf)
    d, layers, L = 32, 2, 4
    for name in SETTINGS:
        assert len({r[name]["prompts_sha256"] for r in measured.values()}) == 1
        for r in measured.values():
            run = r[name]
            assert run["same_prompts_as_others"] and run["exact_tokens"] and run["tokens_per_s"] > 0
            assert len(run["run_seconds"]) == 1 and (run["prompt"], run["decode"]) == (8, 8)
        block, vanilla = measured["block"][name], measured["vanilla"][name]
        assert block["kv_bytes_per_sequence"] < vanilla["kv_bytes_per_sequence"]
        assert vanilla["kv_bytes_per_sequence"] == 2 * layers * (8 + 8 - 1) * d * 4  # every token but the last cached
        assert block["kv_bytes_per_layer"] == 2 * (math.ceil(8 / L) + (8 - 1) // L) * d * 4  # one entry per block
        if "hf-gptneox" in measured:
            assert hf[name]["kv_bytes_source"] == "computed"
            assert hf[name]["kv_bytes_per_sequence"] == vanilla["kv_bytes_per_sequence"]
    for name in ("block", "vanilla"):
        assert measured[name]["val_ppl"] > 0 and measured[name]["trained_parameters"] > 0
    expected = {f"{figure}_{name}" for name in SETTINGS for figure in (
        "tokens_per_s_block_vs_vanilla", "kv_bytes_vanilla_vs_block", "kv_bytes_per_layer_vanilla_vs_block")}
    expected.add("val_ppl_block_vs_vanilla")
    if "hf-gptneox" in measured:
        expected |= {f"tokens_per_s_{ours}_vs_hf_{name}" for ours in ("block", "vanilla") for name in SETTINGS}
    assert expected <= set(report["ratios"]) and all(v > 0 for v in report["ratios"].values())
