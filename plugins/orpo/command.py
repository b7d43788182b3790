"""`lmlab train-orpo`: odds ratio preference optimisation on the shared training loop."""

from __future__ import annotations

from typing import Annotated

import typer

from lmlab.core import options as o
from lmlab.core.console import err, print_json, set_quiet
from lmlab.core.report import summary_table


def train_orpo(
    model: Annotated[str, typer.Option("--model", "-m", help="Model alias, local HF folder, or Hub id.")] = (
        "tiny-llama"),
    data: Annotated[str | None, typer.Option("--data", "-d", help="Preference rows: JSONL/JSON/CSV/Parquet, a "
                    "saved HF dataset, or a Hub id (default: bundled examples/orpo/preferences.jsonl).",
                    show_default=False)] = None,
    output_dir: o.OutputDirOpt = None,
    max_steps: o.MaxStepsOpt = 20,
    batch_size: o.BatchSizeOpt = 4,
    grad_accum: o.GradAccumOpt = 1,
    lr: o.LrOpt = 5e-6,
    schedule: o.ScheduleOpt = "inverse_sqrt",
    warmup_steps: o.WarmupOpt = 10,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, help="AdamW weight decay.")] = 0.0,
    max_grad_norm: o.MaxGradNormOpt = 1.0,
    beta: Annotated[float, typer.Option("--beta", min=0.0, help="λ, weight of the odds-ratio term.")] = 0.1,
    prompt_loss: Annotated[bool, typer.Option("--prompt-loss/--no-prompt-loss",
                           help="Include prompt tokens in the NLL term (the authors' default).")] = True,
    max_length: o.MaxLengthOpt = 512,
    max_prompt_length: Annotated[int | None, typer.Option("--max-prompt-length", min=1,
                                 help="Keep only the last N prompt tokens (default: never cut prompts).",
                                 show_default=False)] = None,
    lora: Annotated[bool, typer.Option("--lora/--no-lora", help="Train LoRA adapters (peft) instead of all "
                    "weights.")] = False,
    lora_r: Annotated[int, typer.Option("--lora-r", min=1, help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", min=1, help="LoRA alpha.")] = 32,
    save_every: o.SaveEveryOpt = 50,
    seed: o.SeedOpt = 42,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code",
                                 help="Allow model code from the Hub (off: safer).")] = False,
    resume: o.ResumeOpt = None,
    config: o.ConfigOpt = None,
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Preference-train a causal LM with ORPO (no reference model): NLL on chosen + λ·odds-ratio loss."""
    from lmlab.plugins.orpo.train import OrpoOptions, run_orpo

    set_quiet(quiet)
    opts = OrpoOptions(model=model, data=data, output_dir=output_dir, max_steps=max_steps, batch_size=batch_size,
                       grad_accum=grad_accum, lr=lr, schedule=schedule, warmup_steps=warmup_steps,
                       weight_decay=weight_decay, max_grad_norm=max_grad_norm, beta=beta, prompt_loss=prompt_loss,
                       max_length=max_length, max_prompt_length=max_prompt_length, lora=lora, lora_r=lora_r,
                       lora_alpha=lora_alpha, save_every=save_every, seed=seed, resume=resume,
                       trust_remote_code=trust_remote_code)
    summary = run_orpo(opts)
    if json_output:
        print_json(summary)
    elif not quiet:
        err.print(summary_table("train-orpo", {k: v for k, v in summary.items() if not isinstance(v, dict)}))
        err.print(f"run directory: [bold]{summary['run_dir']}[/bold]")
