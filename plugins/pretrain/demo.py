"""Pre-training's part of `lmlab demo`: MHA vs MLRA on Tiny Shakespeare, both runs' losses and TEV on one
figure, a sample generated."""

from __future__ import annotations

from pathlib import Path

from lmlab.core.kernel.console import err
from lmlab.core.serving.generation import generate_text
from lmlab.core.training.report import plot_runs
from lmlab.plugins.pretrain.options import PretrainOptions
from lmlab.plugins.pretrain.train import PretrainTrainer


def run_demo(output_dir: str, quick: bool) -> None:
    metrics: dict[str, Path] = {}
    steps = 60 if quick else 100  # --quick keeps the whole demo near a minute
    for attn in ("mha", "mlra"):
        summary = PretrainTrainer(PretrainOptions(attn=attn, output_dir=Path(output_dir) / f"pretrain-{attn}",
                                                  overwrite=True, max_steps=steps, eval_every=steps // 2)).run()
        final = summary["final"]
        err.print(f"{attn}: {summary['parameters']:,} params · val ppl {summary['val_ppl']:.1f} · "
                  f"TEV μ {final.get('tev_mean', float('nan')):.4f} σ {final.get('tev_std', float('nan')):.4f} · "
                  f"{summary['tokens_per_s']} tok/s → [bold]{summary['run_dir']}[/bold]")
        metrics[attn.upper()] = Path(summary["run_dir"]) / "metrics.jsonl"
    figure = Path(output_dir) / "pretrain-mha-vs-mlra.png"
    if plot_runs(metrics, ("val_loss", "loss", "tev_mean"), figure, "pre-training on Tiny Shakespeare: MHA vs MLRA"):
        err.print(f"MHA vs MLRA (validation loss, training loss, TEV): [bold]{figure}[/bold]")
    sample = generate_text(Path(summary["model_dir"]), "ROMEO:", max_new_tokens=40, temperature=0.8, top_k=50,
                           seed=0).text
    err.print(f"[dim]sample (mlra):[/dim] ROMEO:{sample}")
