"""Where a model runs and in what dtype, for every command that runs one outside the training loop (which keeps
accelerate's placement): `--device` (env LMLAB_DEVICE) and `--precision`, declared once here and resolved by
`resolve_device` / `inference_dtype`; `place` moves a model there. What a benchmark needs to time and measure a
device honestly is here too: `synchronize` before reading a clock, and `peak_memory_mb`, naming the source it read."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lmlab.core.bench.machine import peak_rss_mb
from lmlab.core.commands.options import DEVICE_HELP, RUN_AND_OUTPUT, option
from lmlab.core.kernel.errors import LmlabError

if TYPE_CHECKING:  # torch is imported where a device is resolved, so that `--help` never loads it
    import torch

PRECISION_HELP = "Inference dtype: auto (bf16 on a GPU that has it, else fp32), fp32 or bf16."
PRECISIONS = ("auto", "fp32", "bf16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|meta)$")
# For commands whose options are a plain Typer signature (generate, the benchmarks).
DeviceOpt = Annotated[str, typer.Option("--device", help=DEVICE_HELP, envvar="LMLAB_DEVICE",
                                        rich_help_panel=RUN_AND_OUTPUT)]
PrecisionOpt = Annotated[str, typer.Option("--precision", help=PRECISION_HELP, rich_help_panel=RUN_AND_OUTPUT)]


def device_option(panel: str = RUN_AND_OUTPUT) -> Any:
    """The `--device` field of an options dataclass."""
    return option("auto", DEVICE_HELP, panel=panel, envvar="LMLAB_DEVICE")


def precision_option(panel: str = RUN_AND_OUTPUT) -> Any:
    """The `--precision` field of an inference command's options dataclass."""
    return option("auto", PRECISION_HELP, panel=panel)


@dataclass
class DeviceOptions:
    """`--device` and `--precision` as a group (`lmlab.core.commands.options.group(DeviceOptions)`)."""

    device: str = device_option()
    precision: str = precision_option()

    def resolve(self) -> tuple[torch.device, torch.dtype]:
        device = resolve_device(self.device)
        return device, inference_dtype(self.precision, device)


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device `spec` names; a GPU asked for that is not there is refused with a hint (exit 2).
    `meta` is accepted for tests that check every tensor is made on the model's device."""
    import torch

    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if not _DEVICE.match(spec):
        raise LmlabError(f"Unknown --device '{spec}'.", hint="use auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LmlabError(f"--device {spec}: no CUDA GPU is visible to torch ({torch.__version__}).",
                             hint="use --device cpu, or install a CUDA build of torch (make TORCH_SPEC=...)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LmlabError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s).",
                             hint=f"use cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    return device


def has_native_bf16(device: torch.device) -> bool:
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def inference_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a model runs inference in on `device` for `--precision`."""
    import torch

    if precision not in PRECISIONS:
        raise LmlabError(f"Unknown --precision '{precision}'.", hint=f"use one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        if not has_native_bf16(device):
            raise LmlabError(f"--precision bf16: {device} has no native bfloat16 support.",
                             hint="use --precision fp32 (or auto)")
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and has_native_bf16(device) else torch.float32


def enable_tf32() -> None:
    """Let float32 matmuls use TF32 tensor cores on Ampere and later (what PyTorch's docs advise for training
    and inference alike; no effect on the CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def place(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """`model` on `device` in `dtype` (floating-point weights only), in eval mode."""
    enable_tf32()
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device).eval()


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); the CPU for a module holding neither."""
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (before reading a clock); nothing to wait for on the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device | str) -> tuple[float, str]:
    """(MiB, source): `torch.cuda.max_memory_allocated` on a GPU, the process's peak RSS on the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return peak_rss_mb(), "peak RSS"


def describe(device: torch.device | str) -> str:
    """The device in words for reports: "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)"."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type
