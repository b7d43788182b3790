"""Plots shared by every command: a run's training curves, several runs overlaid on one figure."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from lmlab.core.training.report import plot_metrics, plot_runs


def metrics(path: Path, losses: list[float], val_every: int = 2) -> Path:
    rows = [{"step": step, "loss": loss, "tev_mean": 0.1 * step} for step, loss in enumerate(losses, 1)]
    for row in rows[val_every - 1::val_every]:
        row["val_loss"] = row["loss"] + 0.1
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_two_runs_share_one_figure_and_its_legend(tmp_path: Path) -> None:
    runs = {"MHA": metrics(tmp_path / "mha.jsonl", [3.0, 2.5, 2.2, 2.0]),
            "MLRA": metrics(tmp_path / "mlra.jsonl", [3.1, 2.4, 2.1, 1.9])}
    out = tmp_path / "both.png"
    labels = plot_runs(runs, ("val_loss", "loss", "tev_mean", "not_logged"), out, "MHA vs MLRA")
    assert labels == ["MHA", "MLRA"]
    assert out.stat().st_size > 0
    width, height = Image.open(out).size
    assert height > width  # three panels stacked: the metric nobody logged has none


def test_a_run_without_metrics_is_left_out_and_nothing_to_plot_writes_nothing(tmp_path: Path) -> None:
    runs = {"MHA": metrics(tmp_path / "mha.jsonl", [3.0, 2.5]), "missing": tmp_path / "none.jsonl"}
    assert plot_runs(runs, ("loss",), tmp_path / "one.png", "t") == ["MHA"]
    assert plot_runs(runs, ("not_logged",), tmp_path / "none.png", "t") == []
    assert not (tmp_path / "none.png").exists()


def test_one_runs_training_plot_has_no_legend_and_nothing_to_plot_gives_none(tmp_path: Path) -> None:
    run = metrics(tmp_path / "run.jsonl", [3.0, 2.5, 2.2])
    assert plot_runs({"": run}, ("loss",), tmp_path / "legendless.png", "t") == [""]
    assert plot_metrics(run, ("loss", "tev_mean"), tmp_path / "training.png", "t") == tmp_path / "training.png"
    assert Image.open(tmp_path / "training.png").size[1] > 0
    assert plot_metrics(run, ("not_logged",), tmp_path / "none.png", "t") is None
    assert not (tmp_path / "none.png").exists()
