"""`lmlab serve-block RUN_DIR`: an OpenAI-compatible server (core.serving.server) with continuous batching, for a run of
any registered architecture (a Block Transformer, or its vanilla twin behind the same API)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from lmlab.core.commands.builder import Alias, deprecated_aliases
from lmlab.core.commands.devices import DeviceOpt, PrecisionOpt, describe, inference_dtype, resolve_device
from lmlab.core.kernel.console import err
from lmlab.core.kernel.errors import LmlabError

LIMITS = "Limits"


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LmlabError(f"Cannot listen on {host}:{port} ({exc.strerror}).",
                             hint="pick a free port with --port, or stop what holds this one") from None


def serve_block(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of `lmlab pretrain` (any architecture) or its "
                                            "model/ folder.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback unless you say otherwise).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="LMLAB_API_KEY", show_default=False,
                       help="Require 'Authorization: Bearer KEY' on /v1/* (also from LMLAB_API_KEY).")] = None,
    model_name: Annotated[str | None, typer.Option("--model-name", show_default=False,
                          help="The model id clients send and /v1/models lists (default: the run's folder name).")]
    = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1, rich_help_panel=LIMITS,
                              help="Sequences decoded together.")] = 32,
    batch_window_ms: Annotated[float, typer.Option("--batch-window-ms", min=0.0, rich_help_panel=LIMITS,
                               help="How long an idle server waits for more requests before starting a batch.")]
    = 5.0,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, rich_help_panel=LIMITS,
                         help="Sequences waiting at most; more get HTTP 429.")] = 256,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, rich_help_panel=LIMITS,
                              help="Most tokens one request may generate (the largest max_tokens it may ask "
                                   "for).")] = 256,
    max_n: Annotated[int, typer.Option("--max-n", min=1, rich_help_panel=LIMITS,
                     help="Largest n (choices per prompt).")] = 8,
    max_body_kb: Annotated[int, typer.Option("--max-body-kb", min=1, rich_help_panel=LIMITS,
                           help="Largest request body; larger get HTTP 413.")] = 1024,
    drain_seconds: Annotated[float, typer.Option("--drain-seconds", min=0.0, rich_help_panel=LIMITS,
                             help="On SIGINT/SIGTERM, how long requests in flight may take to finish.")] = 30.0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
) -> None:
    """Serve a saved model over the OpenAI HTTP API (/v1/completions, /v1/chat/completions, /v1/models, /health,
    /metrics) with continuous batching: concurrent requests share forward passes."""
    from lmlab.core.serving.engine import Engine
    from lmlab.core.serving.generation import load_generator
    from lmlab.core.serving.server import Limits, Server, run_server

    where = resolve_device(device)
    dtype = inference_dtype(precision, where)
    _check_port(host, port)
    model, tokenizer = load_generator(run_dir, where, dtype)
    folder = run_dir.resolve()
    name = model_name or (folder.parent.name if folder.name == "model" else folder.name)
    config = model.config
    limits = Limits(max_tokens=max_new_tokens, max_n=max_n, max_body_bytes=max_body_kb * 1024,
                    context=config.block_size)
    engine = Engine(model, tokenizer, max_batch_size=max_batch_size, batch_window_ms=batch_window_ms,
                    max_queue=max_queue).start()
    server = Server(engine, tokenizer, model_name=name, limits=limits, api_key=api_key or None,
                    log=lambda line: err.print(line, markup=False, highlight=False))

    def ready() -> None:
        err.print(f"[bold]lmlab serve-block[/bold]: [bold]{name}[/bold] ({config.arch}, {model.num_params():,} "
                  f"parameters, context {config.block_size}, on {describe(where)} in "
                  f"{str(dtype).removeprefix('torch.')}) at [bold]http://{host}:{port}/v1[/bold] · batch ≤ "
                  f"{max_batch_size}, window {batch_window_ms:g} ms, queue ≤ {max_queue}, max_tokens ≤ "
                  f"{max_new_tokens} · API key {'required' if api_key else 'off'} · pid {os.getpid()} (Ctrl-C or "
                  "SIGTERM drains and stops)")

    run_server(server, host, port, drain_seconds=drain_seconds, on_ready=ready)
    err.print("stopped")


serve_block_command = deprecated_aliases(serve_block, [Alias("--max-tokens", "max_new_tokens")])
