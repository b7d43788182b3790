"""`lmlab bench pretrain`: registration, the HF GPT-2 twin of our model, the report's ratios, a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.core.bench.benchmark import parse_systems, ratio_values
from lmlab.core.kernel.errors import LmlabError
from lmlab.plugins.pretrain.bench import BENCHMARK, SYSTEMS, _shared_gemm_peaks
from lmlab.plugins.pretrain.hf_gpt2 import build_gpt, hf_twin, model_flops_per_token
from tests.conftest import run_cli

TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "block_size": 16, "vocab_size": 64, "seed": 3}


def test_bench_pretrain_is_registered() -> None:
    result = run_cli("bench", "pretrain", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--n-layer", "--n-embd", "--n-head", "--block-size", "--batch-size", "--max-steps", "--vocab-size",
                   "--systems", "--json", "--seed", "--device"):
        assert option in result.stdout, option


def test_hf_gpt2_twin_computes_our_models_function() -> None:
    """Same initial weights (Linear → Conv1D transposed, HF biases zero): same logits and loss on a batch."""
    hf, attention = hf_twin(TINY)
    ours = build_gpt(TINY, "mha")
    assert attention in ("sdpa", "eager")
    idx, targets = torch.randint(0, 64, (3, 16)), torch.randint(0, 64, (3, 16))
    with torch.no_grad():
        logits, loss = ours(idx, targets)
        out = hf(input_ids=idx, labels=targets, shift_labels=targets, use_cache=False)
    assert torch.allclose(out.logits, logits, atol=1e-5)
    assert out.loss.item() == pytest.approx(loss.item(), abs=1e-5)
    assert sum(p.numel() for p in hf.parameters()) > ours.num_params(non_embedding=False)  # HF's biases


def test_both_models_count_the_same_model_flops() -> None:
    """MFU's numerator: 6 × matmul weights (wte once, as the tied head; no wpe, no biases) + 12·L·T·d."""
    hf, _ = hf_twin(TINY)
    ours = build_gpt(TINY, "mha")
    d, layers, vocab = TINY["n_embd"], TINY["n_layer"], TINY["vocab_size"]
    matmul = vocab * d + layers * (3 * d * d + d * d + 2 * 4 * d * d)
    expected = 6 * matmul + 12 * layers * TINY["block_size"] * d
    assert model_flops_per_token(ours, TINY) == model_flops_per_token(hf, TINY) == expected


def test_ratios_and_systems() -> None:
    results = {
        "hf-gpt2": {"tokens_per_s": 100.0, "step_time_s": 1.0, "peak_memory_increase_mb": 200.0},
        "lmlab-mha": {"tokens_per_s": 130.0, "step_time_s": 0.8, "peak_memory_increase_mb": 100.0},
        "lmlab-mha-tev": {"tokens_per_s": 128.0, "step_time_s": 0.8, "monitor_time_s": 0.004,
                          "peak_memory_increase_mb": 100.0},
        "lmlab-mlra": {"skipped": "not run"},
    }
    ratios = ratio_values(BENCHMARK.ratios, results)
    assert ratios["tokens_per_s_lmlab_vs_hf"] == 1.3 and ratios["peak_mem_increase_lmlab_vs_hf"] == 0.5
    assert ratios["tev_overhead"] == 0.005 and ratios["step_time_tev_vs_mha"] == 1.0
    assert "tokens_per_s_mlra_vs_mha" not in ratios
    assert parse_systems(" lmlab-mha,hf-gpt2,lmlab-mha", SYSTEMS) == ["lmlab-mha", "hf-gpt2"]
    with pytest.raises(LmlabError, match="Unknown --systems"):
        parse_systems("gpt4", SYSTEMS)


@pytest.mark.slow
def test_tiny_bench_runs_every_system_on_the_same_batches() -> None:
    result = run_cli("bench", "pretrain", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32",
                     "--batch-size", "2", "--max-steps", "1", "--vocab-size", "512", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["benchmark"] == "pretrain" and set(report["results"]) == set(SYSTEMS)
    hf, tev_run = report["results"]["hf-gpt2"], report["results"]["lmlab-mha-tev"]
    assert all(r["same_batches_as_others"] for r in report["results"].values() if "skipped" not in r)
    bf16 = report["results"]["lmlab-mha-bf16"]
    assert ("skipped" in bf16) == (not torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if "skipped" not in bf16:
        assert "bf16 autocast" in bf16["attention"] and report["ratios"]["tokens_per_s_lmlab_bf16_vs_hf_bf16"] > 0
    assert hf["first_loss_abs_diff_vs_lmlab_mha"] < 1e-5
    assert tev_run["monitor_time_s"] > 0 and "tev_mean_last" in tev_run
    for key in ("tokens_per_s_lmlab_vs_hf", "tev_overhead", "tokens_per_s_mlra_vs_mha"):
        assert report["ratios"][key] > 0, key
    assert {"throughput_compared", "mfu", "gemm_peak"} <= set(report["settings"])
    assert report["settings"]["device"] == "cpu" and report["settings"]["memory_source"] == "peak RSS"
    for r in report["results"].values():
        if "skipped" not in r:
            assert r["gemm_peak_gflops"] > 0 and r["mfu"] > 0


def test_mfu_holds_every_system_of_a_precision_to_the_best_gemm_peak() -> None:
    def system(peak: float) -> dict:
        return {"gemm_peak_gflops": peak, "model_flops_per_token": 1e6, "tokens_per_s": 100.0, "mfu": 0.0}

    measured = {"hf-gpt2": system(200.0), "lmlab-mha": system(250.0), "lmlab-mha-bf16": system(1000.0)}
    _shared_gemm_peaks(measured)
    assert [r["gemm_peak_gflops"] for r in measured.values()] == [250.0, 250.0, 1000.0]
    assert measured["hf-gpt2"]["gemm_peak_gflops_worker"] == 200.0
    assert measured["hf-gpt2"]["mfu"] == measured["lmlab-mha"]["mfu"] == 1e8 / 250e9
    assert measured["lmlab-mha-bf16"]["mfu"] == 1e8 / 1000e9
