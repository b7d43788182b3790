"""`lmlab generate`: continue a prompt with a saved model of any registered architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmlab.core.commands import options as o
from lmlab.core.commands.devices import DeviceOpt, PrecisionOpt
from lmlab.core.kernel.console import print_json


def generate(
    model_dir: Annotated[Path, typer.Argument(help="A run directory of `lmlab pretrain` (any registered "
                                              "architecture) or its model/ folder.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue.", show_default="a newline")] = "\n",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate.")] = 200,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 means greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="Sample from the k likeliest tokens.",
                     show_default=False)] = 50,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Sample from the smallest set of "
                     "tokens whose probability reaches p (1: all).")] = 1.0,
    stop: Annotated[list[str], typer.Option("--stop", help="Stop before this text, repeatable.",
                    show_default=False)] = [],  # noqa: B006 (typer reads the default; it is never mutated)
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Keep generating past the end-of-text token.")]
    = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the sampling.")] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    json_output: o.JsonOpt = False,
) -> None:
    """Continue a prompt with a saved model (KV-cached where its architecture has the generation interface): a
    run of any registered architecture (`lmlab plugins` lists them)."""
    from lmlab.core.commands.devices import inference_dtype, resolve_device
    from lmlab.core.serving.generation import generate_text

    where = resolve_device(device)
    done = generate_text(model_dir, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, stop=stop, ignore_eos=ignore_eos, seed=seed, device=where,
                         dtype=inference_dtype(precision, where))
    if json_output:
        print_json({"prompt": prompt, "completion": done.text, "finish_reason": done.finish_reason,
                    "tokens": len(done.tokens)})
    else:
        typer.echo(prompt + done.text)
