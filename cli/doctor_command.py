"""`lmlab doctor`: the smoke check, every command once on one device (a GPU by default when there is one)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmlab.core.commands import options as o
from lmlab.core.commands.devices import DeviceOpt


def doctor(
    device: DeviceOpt = "auto",
    size: Annotated[str, typer.Option("--size", help="tiny (fewest steps, smallest models: what the test suite runs "
                                      "on the CPU) or small (a few more steps, SmolLM2-135M for eval).")] = "small",
    step: Annotated[list[str], typer.Option("--step", help="Run only this step (repeatable; a step whose input "
                                            "step is not run is skipped).", show_default=False, metavar="<str>")] = [],  # noqa: B006
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds one step may take.")] = 600.0,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the steps' runs and logs.")]
    = Path("runs/doctor"),
    json_output: o.JsonOpt = False,
) -> None:
    """Run every lmlab command once at toy size on --device (trainers with bf16 on a GPU, resume, LoRA, gradient
    checkpointing, FSDP2 on one rank, generate, serve-block under concurrent requests, eval, retrieve,
    train-reranker, augment eval) and print each step's exit code, seconds and peak memory. Exits 1 if any failed."""
    from rich.markup import escape
    from rich.table import Table

    from lmlab.core.commands.devices import describe, resolve_device
    from lmlab.core.commands.doctor import SIZES, Outcome, run_smoke
    from lmlab.core.kernel.console import err, print_json
    from lmlab.core.kernel.errors import LmlabError

    if size not in SIZES:
        raise LmlabError(f"Unknown --size '{size}'.", hint=f"use one of: {', '.join(SIZES)}")
    where = resolve_device(device)
    err.print(f"lmlab doctor on [bold]{describe(where)}[/bold], size {size}; logs in {escape(str(output_dir))}")

    def show(outcome: Outcome) -> None:
        status = "skipped" if outcome.exit_code is None else f"exit {outcome.exit_code}"
        peak = f"{outcome.peak_mb:.0f} MiB ({outcome.memory_source})" if outcome.peak_mb is not None else "-"
        err.print(f"{outcome.name}: {status} · {outcome.seconds:.1f} s · peak {peak} {outcome.note}".rstrip())

    outcomes = run_smoke(output_dir, str(where), size, step, timeout, on_outcome=show)
    failed = [x.name for x in outcomes if x.exit_code not in (0, None)]
    if json_output:
        print_json({"device": describe(where), "size": size, "failed": failed,
                    "steps": [vars(x) for x in outcomes]})
    else:
        table = Table(title=f"lmlab doctor · {describe(where)}")
        for column in ("step", "exit", "seconds", "peak MiB", "memory source"):
            table.add_column(column)
        for x in outcomes:
            table.add_row(x.name, "skipped" if x.exit_code is None else str(x.exit_code), f"{x.seconds:.1f}",
                          "-" if x.peak_mb is None else f"{x.peak_mb:.0f}", x.memory_source or x.note)
        err.print(table)
        err.print(f"[bold]{len(outcomes) - len(failed)}/{len(outcomes)} steps passed[/bold]" +
                  (f"; failed: {escape(', '.join(failed))} (see their .log in {escape(str(output_dir))})"
                   if failed else ""))
    if failed:
        raise typer.Exit(1)

