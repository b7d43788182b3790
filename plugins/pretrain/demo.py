"""Pre-training's part of `lmlab demo`: MHA vs MLRA on Tiny Shakespeare, TEV plotted, a sample generated."""

from __future__ import annotations

from pathlib import Path

from lmlab.core.console import err
from lmlab.plugins.pretrain.sample import generate_text
from lmlab.plugins.pretrain.train import PretrainOptions, run_pretrain


def run_demo(output_dir: str, quick: bool) -> None:
    for attn in ("mha", "mlra"):
        summary = run_pretrain(PretrainOptions(attn=attn, output_dir=Path(output_dir) / f"pretrain-{attn}",
                                               max_steps=100, eval_every=50))
        final = summary["final"]
        err.print(f"{attn}: {summary['parameters']:,} params · val ppl {summary['val_ppl']:.1f} · "
                  f"TEV μ {final.get('tev_mean', float('nan')):.4f} σ {final.get('tev_std', float('nan')):.4f} · "
                  f"{summary['tokens_per_s']} tok/s → [bold]{summary['run_dir']}[/bold]")
    sample = generate_text(Path(summary["model_dir"]), "ROMEO:", max_new_tokens=40, temperature=0.8, top_k=50, seed=0)
    err.print(f"[dim]sample (mlra):[/dim] ROMEO:{sample}")
