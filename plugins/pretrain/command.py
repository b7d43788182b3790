"""`lmlab pretrain` and `lmlab generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmlab.core import options as o
from lmlab.core.console import err, print_json, set_quiet
from lmlab.core.report import summary_table


def pretrain(
    data: Annotated[str | None, typer.Option("--data", "-d", help="Text file, folder of text, JSONL/CSV/Parquet with "
                    "a text field, saved HF dataset or Hub id (default: bundled Tiny Shakespeare).",
                    show_default=False)] = None,
    text_field: Annotated[str, typer.Option("--text-field", help="Field holding the text in record files.")] = "text",
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="Tokenizer folder or model alias (default: "
                         "train a byte-level BPE on the corpus, cached).", show_default=False)] = None,
    vocab_size: Annotated[int, typer.Option("--vocab-size", min=260, help="Vocabulary of a trained tokenizer.")] = 4096,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.5,
                            help="Share of tokens held out for validation.")] = 0.1,
    arch: Annotated[str, typer.Option("--arch", help="Architecture (from register_architectures).")] = "gpt",
    attn: Annotated[str, typer.Option("--attn", help="Attention (from register_attention): mha, mlra, …")] = "mha",
    attn_opt: Annotated[list[str] | None, typer.Option("--attn-opt", help="Attention option KEY=VALUE, repeatable "
                        "(mlra: rank=N, targets=q,k,v).", show_default=False)] = None,
    n_layer: Annotated[int, typer.Option("--n-layer", min=1, help="Transformer blocks.")] = 4,
    n_head: Annotated[int, typer.Option("--n-head", min=1, help="Attention heads.")] = 4,
    n_embd: Annotated[int, typer.Option("--n-embd", min=8, help="Model width.")] = 128,
    block_size: Annotated[int, typer.Option("--block-size", min=8, help="Context length in tokens.")] = 128,
    dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=0.9, help="Dropout.")] = 0.0,
    output_dir: o.OutputDirOpt = None,
    max_steps: o.MaxStepsOpt = 100,
    batch_size: o.BatchSizeOpt = 16,
    grad_accum: o.GradAccumOpt = 1,
    lr: o.LrOpt = 1e-3,
    schedule: o.ScheduleOpt = "cosine",
    warmup_steps: o.WarmupOpt = 20,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, help="AdamW decay (matrices only).")] = 0.1,
    max_grad_norm: o.MaxGradNormOpt = 1.0,
    tev_every: Annotated[int, typer.Option("--tev-every", min=0, help="Log TEV every N steps (0: off).")] = 1,
    grad_var_every: Annotated[int, typer.Option("--grad-var-every", min=0, help="Measure the embedding-gradient "
                              "variance across micro-batches every N steps (expensive; 0: off).")] = 0,
    eval_every: Annotated[int, typer.Option("--eval-every", min=0, help="Validation loss every N steps.")] = 50,
    save_every: o.SaveEveryOpt = 100,
    seed: o.SeedOpt = 42,
    precision: o.PrecisionOpt = "auto",
    resume: o.ResumeOpt = None,
    config: o.ConfigOpt = None,
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Pre-train a small GPT from scratch, logging TEV (token embedding variability) and validation perplexity."""
    from lmlab.plugins.pretrain.train import PretrainOptions, run_pretrain

    set_quiet(quiet)
    summary = run_pretrain(PretrainOptions(
        data=data, text_field=text_field, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction,
        arch=arch, attn=attn, attn_opt=list(attn_opt or []), n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        block_size=block_size, dropout=dropout, output_dir=output_dir, max_steps=max_steps, batch_size=batch_size,
        grad_accum=grad_accum, lr=lr, schedule=schedule, warmup_steps=warmup_steps, weight_decay=weight_decay,
        max_grad_norm=max_grad_norm, tev_every=tev_every, grad_var_every=grad_var_every, eval_every=eval_every,
        save_every=save_every, seed=seed, precision=precision, resume=Path(resume) if resume else None))
    if json_output:
        print_json(summary)
    elif not quiet:
        err.print(summary_table("pretrain", {k: v for k, v in summary.items() if not isinstance(v, dict)}))
        err.print(f"run directory: [bold]{summary['run_dir']}[/bold]  ·  try: lmlab generate {summary['model_dir']}")


def generate(
    model_dir: Annotated[Path, typer.Argument(help="A pretrain run directory or its model/ folder.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue.")] = "\n",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate.")] = 200,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 means greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="Sample from the k likeliest tokens.",
                     show_default=False)] = 50,
    seed: o.SeedOpt = 0,
    json_output: o.JsonOpt = False,
) -> None:
    """Continue a prompt with a model trained by `lmlab pretrain`."""
    from lmlab.plugins.pretrain.sample import generate_text

    text = generate_text(model_dir, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         seed=seed)
    if json_output:
        print_json({"prompt": prompt, "completion": text})
    else:
        typer.echo(prompt + text)
