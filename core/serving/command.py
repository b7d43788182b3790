"""`lmlab serve MODEL` (also `lmlab serve-block`): the OpenAI-compatible server (core.serving.server) with continuous
batching, for every model lmlab trains or loads: a run of `lmlab pretrain` of any registered architecture, an HF
causal-LM folder (a `train-orpo` run, anything save_pretrained wrote) or an alias (smollm2-135m, tiny-llama)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from lmlab.core.commands.builder import Alias, deprecated_aliases
from lmlab.core.commands.devices import DeviceOpt, PrecisionOpt, describe, inference_dtype, place, resolve_device
from lmlab.core.kernel.console import err
from lmlab.core.kernel.errors import LmlabError, ModelError

if TYPE_CHECKING:
    import torch

LIMITS = "Limits"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class ServedModel:
    """What `lmlab serve` serves: the model (with the generation interface, or forward only), its tokenizer, the
    name clients send and where the model came from."""

    model: Any
    tokenizer: Any
    name: str
    source: str


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LmlabError(f"Cannot listen on {host}:{port} ({exc.strerror}).",
                             hint="pick a free port with --port, or stop what holds this one") from None


def _is_lmlab_model(folder: Path) -> bool:
    """Whether config.json is one of lmlab's architectures (it names an "arch"), not an HF model's."""
    try:
        return "arch" in json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def load_served_model(spec: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, *,
                      notify: Callable[[str], None] | None = None) -> ServedModel:
    """The model `spec` names, on `device` in `dtype`: an lmlab run (or its model/ folder) through `load_generator`;
    an HF folder, an alias or a Hub id (offline) through `load_model`, behind the HF adapter (`notify` gets its
    one-line note when the model cannot be KV-cached)."""
    import torch

    from lmlab.core.models.architectures import saved_model_folder
    from lmlab.core.models.loading import load_model, model_aliases
    from lmlab.core.serving.generation import load_generator
    from lmlab.core.serving.hf_model import serving_model

    device = torch.device(device)
    path = Path(spec).expanduser()
    folder = saved_model_folder(path, HF_WEIGHTS) if path.is_dir() else None
    if path.is_dir() and folder is None:
        raise ModelError(f"{spec}: no model here (config.json and weights, in it or in its model/ folder).",
                         hint="pass a run of `lmlab pretrain` or `lmlab train-orpo`, an HF model folder, or an alias: "
                              f"{', '.join(sorted(model_aliases()))}")
    if folder is not None:
        name = folder.resolve().parent.name if folder.name == "model" else folder.resolve().name
        if _is_lmlab_model(folder):
            model, tokenizer = load_generator(folder, device, dtype)
            return ServedModel(model, tokenizer, name, str(folder))
        spec = str(folder)
    else:
        name = spec
    hf, tokenizer = load_model(spec, dtype=dtype)
    return ServedModel(serving_model(place(hf, device, dtype), notify), tokenizer, name, spec)


def _note(line: str) -> None:
    err.print(line, markup=False, highlight=False)


def serve(
    model: Annotated[str, typer.Argument(help="A run of `lmlab pretrain` (any architecture) or `lmlab train-orpo`, "
                                         "its model/ folder, an HF model folder, or an alias (smollm2-135m, "
                                         "tiny-llama).", metavar="MODEL")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback unless you say otherwise).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="LMLAB_API_KEY", show_default=False,
                       help="Require 'Authorization: Bearer KEY' on /v1/* (also from LMLAB_API_KEY).")] = None,
    model_name: Annotated[str | None, typer.Option("--model-name", show_default=False,
                          help="The model id clients send and /v1/models lists (default: the run's folder name, "
                               "or the alias).")] = None,
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
    """Serve a model over the OpenAI HTTP API (/v1/completions, /v1/chat/completions, /v1/models, /health,
    /metrics) with continuous batching: concurrent requests share forward passes."""
    from lmlab.core.serving.engine import Engine
    from lmlab.core.serving.server import Limits, Server, run_server

    where = resolve_device(device)
    dtype = inference_dtype(precision, where)
    _check_port(host, port)
    served = load_served_model(model, where, dtype, notify=_note)
    name, config = model_name or served.name, served.model.config
    limits = Limits(max_tokens=max_new_tokens, max_n=max_n, max_body_bytes=max_body_kb * 1024,
                    context=config.block_size)
    engine = Engine(served.model, served.tokenizer, max_batch_size=max_batch_size, batch_window_ms=batch_window_ms,
                    max_queue=max_queue).start()
    server = Server(engine, served.tokenizer, model_name=name, limits=limits, api_key=api_key or None, log=_note)
    cached = callable(getattr(served.model, "prefill", None))
    tokenizer_at = getattr(served.tokenizer, "name_or_path", "") or served.source
    kind = "KV-cached" if cached else "recomputed"

    def ready() -> None:
        err.print(f"[bold]lmlab serve[/bold]: [bold]{escape(name)}[/bold] ({config.arch}, "
                  f"{served.model.num_params():,} parameters, context {config.block_size}, {kind}, on "
                  f"{describe(where)} in {str(dtype).removeprefix('torch.')}; tokenizer {escape(tokenizer_at)}) at "
                  f"[bold]http://{host}:{port}/v1[/bold] · batch ≤ {max_batch_size}, window {batch_window_ms:g} ms, "
                  f"queue ≤ {max_queue}, max_tokens ≤ {max_new_tokens} · API key {'required' if api_key else 'off'} "
                  f"· pid {os.getpid()} (Ctrl-C or SIGTERM drains and stops)")

    run_server(server, host, port, drain_seconds=drain_seconds, on_ready=ready)
    err.print("stopped")


serve_command = deprecated_aliases(serve, [Alias("--max-tokens", "max_new_tokens")])
