"""Atomic checkpoints: everything needed to continue bit-for-bit, written to a temp dir then renamed.

checkpoints/step-000040/ holds model.safetensors, optimizer.pt, scheduler.pt, rng-<rank>.pt and, written
last, state.json (step, epoch, position in the epoch, whether FSDP wrote it). A folder without state.json is
never loaded.

Under FSDP (accelerate's `fsdp_version: 2`) the shards of every process are gathered whole onto process 0
(accelerate's `get_state_dict` for the weights, torch's `get_optimizer_state_dict` for AdamW's moments) and
written to the same files; loading reads them on process 0 and hands each process its shard. Nothing is
unpickled: weights are safetensors and the rest goes through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, load_model, save_file, save_model

from lmlab.core.errors import LmlabError

STATE = "state.json"


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    done = sorted(p for p in checkpoints.glob("step-*") if (p / STATE).is_file())
    return done[-1] if done else None


def save(folder: Path, accelerator: Accelerator, *, model: torch.nn.Module, optimizer: Any, scheduler: Any,
         state: dict[str, Any], keep: int) -> Path:
    """Write a checkpoint atomically from the prepared `model` and `optimizer` (every process writes its RNG
    and, under FSDP, sends its shards; the main process writes the rest)."""
    main = accelerator.is_main_process
    target = folder / f"step-{state['step']:06d}"
    tmp = folder / f".tmp-step-{state['step']:06d}"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_fsdp2:
        weights, moments = accelerator.get_state_dict(model), _gathered_optimizer(model, optimizer)
        if main:
            save_file(weights, str(tmp / "model.safetensors"))
            torch.save(moments, tmp / "optimizer.pt")
    elif main:
        save_model(accelerator.unwrap_model(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    if main:
        (tmp / STATE).write_text(json.dumps({**state, "fsdp": accelerator.is_fsdp2}, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        for old in sorted(p for p in folder.glob("step-*") if (p / STATE).is_file())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def load(folder: Path, accelerator: Accelerator, *, model: torch.nn.Module, optimizer: Any,
         scheduler: Any) -> dict[str, Any]:
    """Restore the prepared model and optimizer, the scheduler and this process's RNG; return the saved
    trainer state."""
    saved = json.loads((folder / STATE).read_text())
    if saved.get("fsdp", False) != accelerator.is_fsdp2:
        raise LmlabError(f"{folder}: written by a run {'with' if saved.get('fsdp') else 'without'} FSDP, resumed "
                         f"{'with' if accelerator.is_fsdp2 else 'without'} it.",
                         hint="resume with the accelerate config the run started with")
    if accelerator.is_fsdp2:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        main = accelerator.is_main_process
        set_model_state_dict(model, load_file(folder / "model.safetensors") if main else {}, options=options)
        moments = torch.load(folder / "optimizer.pt", weights_only=True) if main else {}
        set_optimizer_state_dict(model, optimizer, moments, options=options)
    else:
        load_model(accelerator.unwrap_model(model), str(folder / "model.safetensors"))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = folder / f"rng-{accelerator.process_index}.pt"
    set_rng_state(torch.load(rng if rng.exists() else folder / "rng-0.pt", weights_only=True))
    return saved


def _gathered_optimizer(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """The optimizer's state with every shard gathered, keyed by parameter name, on process 0 ({} elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))
