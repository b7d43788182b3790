"""Toy-scale check of the TEV/MLRA paper's claim: with depth and a high learning rate, MHA's
TEV rises and its loss spikes, while MLRA keeps TEV lower and reaches lower perplexity.

    python examples/pretrain/depth_sweep.py -o runs/depth-sweep [--depths 2 8 24] [--lr 3e-3] [--max-steps 150]

Writes one pretrain run per (attention, depth), then results.md (a table) and depth_sweep.png (TEV curves and
validation perplexity) in --output-dir.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lmlab.core.training.report import read_metrics  # noqa: E402
from lmlab.plugins.pretrain.options import PretrainOptions  # noqa: E402
from lmlab.plugins.pretrain.train import PretrainTrainer  # noqa: E402


def spikes(losses: list[float], window: int = 10, factor: float = 1.3) -> int:
    """Steps whose loss exceeds `factor` × the median of the previous `window` steps."""
    return sum(1 for i in range(window, len(losses))
               if losses[i] > factor * statistics.median(losses[i - window:i]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", "-o", type=Path, default=Path("runs/depth-sweep"))
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 8, 24])
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    curves = {}
    for depth in args.depths:
        for attn in ("mha", "mlra"):
            run = args.output_dir / f"{attn}-{depth}"
            summary = PretrainTrainer(PretrainOptions(
                attn=attn, n_layer=depth, n_embd=args.width, n_head=4, block_size=64, batch_size=16, lr=args.lr,
                warmup_steps=10, max_steps=args.max_steps, eval_every=args.max_steps, grad_var_every=25,
                save_every=10_000, seed=args.seed, output_dir=run)).run()
            metrics = read_metrics(run / "metrics.jsonl")
            tev = [m["tev_mean"] for m in metrics]
            curves[(attn, depth)] = tev
            rows.append({"attn": attn, "depth": depth, "params": summary["parameters"],
                         "val_ppl": round(summary["val_ppl"], 2), "tev_mean_final": round(tev[-1], 5),
                         "tev_mean_max": round(max(tev), 5), "tev_std_final": round(metrics[-1]["tev_std"], 5),
                         "loss_spikes": spikes([m["loss"] for m in metrics]),
                         "max_grad_norm": round(max(m["grad_norm"] for m in metrics), 3),
                         "emb_grad_var_final": [m["emb_grad_var"] for m in metrics if "emb_grad_var" in m][-1]})
    header = list(rows[0])
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    (args.output_dir / "results.md").write_text(
        f"lr {args.lr}, width {args.width}, {args.max_steps} steps, Tiny Shakespeare\n\n" + "\n".join(table) + "\n")
    (args.output_dir / "results.json").write_text(json.dumps(rows, indent=2))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for (attn, depth), tev in curves.items():
        left.plot(tev, label=f"{attn} · {depth} layers", linestyle="-" if attn == "mha" else "--")
    left.set_xlabel("step")
    left.set_ylabel("μ_TEV")
    left.legend(fontsize=7)
    for offset, attn in enumerate(("mha", "mlra")):
        picked = [r for r in rows if r["attn"] == attn]
        right.bar([i * 3 + offset for i in range(len(picked))], [r["val_ppl"] for r in picked], label=attn)
    right.set_xticks([i * 3 + 0.5 for i in range(len(args.depths))], [f"{d} layers" for d in args.depths])
    right.set_ylabel("validation perplexity")
    right.legend()
    fig.tight_layout()
    fig.savefig(args.output_dir / "depth_sweep.png", dpi=110)
    print("\n".join(table))


if __name__ == "__main__":
    main()
