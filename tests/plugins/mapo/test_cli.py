"""`lmlab train-mapo` end to end on tiny-sdxl: run directory, alignment direction, resume, DPO, LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import run_cli, straight_and_resumed
from tests.plugins.mapo.conftest import make_pairs

FAST = ("--samples", "2", "--sample-steps", "2", "--lr", "1e-3")


def test_default_run_trains_tiny_sdxl_on_bundled_pairs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("train-mapo", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["loss"] == "mapo" and summary["steps"] == 30 and summary["skipped"]
    for key in ("mse_w", "mse_l", "f_w", "f_l", "margin", "win_rate"):
        assert key in summary["final"], key
    assert (out / "unet" / "config.json").exists() and (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "loss.png").exists() and (out / "summary.json").exists() and (out / "config.json").exists()


def test_training_lowers_the_winners_error_on_heldout_pairs(tmp_path: Path) -> None:
    train = make_pairs(tmp_path / "train", n=16, ties=0)
    held = make_pairs(tmp_path / "held", n=6, ties=0)
    result = run_cli("train-mapo", "--data", str(train), "--eval-data", str(held), "--max-steps", "30", *FAST,
                     "--json", "-o", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    heldout = json.loads(result.stdout)["heldout"]
    assert heldout["after"]["gap"] < heldout["before"]["gap"]
    assert heldout["after"]["winner_lower"] > heldout["before"]["winner_lower"]


def test_resume_after_sigkill_reaches_the_same_unet(tmp_path: Path, pairs: Path) -> None:
    common = ("train-mapo", "--data", str(pairs), "--max-steps", "12", "--save-every", "2", "--batch-size", "2",
              "--samples", "0")
    a, b, _, _ = straight_and_resumed(common, tmp_path, 4, "unet/diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_dpo_and_lora_runs(tmp_path: Path, pairs: Path) -> None:
    dpo = run_cli("train-mapo", "--loss", "dpo", "--data", str(pairs), "--max-steps", "2", *FAST, "--json",
                  "-o", str(tmp_path / "dpo"))
    assert dpo.returncode == 0, dpo.stderr
    final = json.loads(dpo.stdout)["final"]
    assert {"ref_w", "ref_l", "implicit_acc", "win_rate"} <= set(final)
    lora = run_cli("train-mapo", "--lora", "--data", str(pairs), "--max-steps", "2", *FAST, "--cache-latents",
                   "--gradient-checkpointing", "-o", str(tmp_path / "lora"))
    assert lora.returncode == 0, lora.stderr
    assert json.loads((tmp_path / "lora" / "config.json").read_text())["options"]["gradient_checkpointing"] is True
    weights = load_file(next((tmp_path / "lora" / "unet_lora").glob("*.safetensors")))
    assert weights and all("lora" in k for k in weights)


def test_bench_mapo_is_registered() -> None:
    result = run_cli("bench", "mapo", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--unet-scale", "--cache-latents", "--json", "--batch-size"):
        assert option in result.stdout, option


@pytest.mark.slow
def test_bench_mapo_runs_both_systems_on_the_same_inputs(pairs: Path) -> None:
    result = run_cli("bench", "mapo", "--data", str(pairs), "--batch-size", "2", "--max-steps", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    mapo, dpo = report["results"]["mapo"], report["results"]["dpo"]
    assert dpo["same_init_as_mapo"] and dpo["same_batches_as_mapo"]
    assert dpo["first_step_mse_abs_diff_vs_mapo"] == 0.0
    # live tensors: both hold AdamW state (2 × the UNet) and gradients; DPO also holds its reference copy
    unet_mb = dpo["reference_unet_param_mb"]
    assert unet_mb > 0 and mapo["reference_unet_param_mb"] == 0
    assert mapo["peak_tensor_mb"] > 3 * unet_mb
    assert dpo["peak_tensor_mb"] > mapo["peak_tensor_mb"] + unet_mb * 0.9
    assert set(report["ratios"]) >= {"step_time_mapo_vs_dpo", "peak_mem_increase_mapo_vs_dpo",
                                     "peak_tensor_mapo_vs_dpo"}
