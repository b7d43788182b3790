"""Atomic checkpoints: everything needed to continue bit-for-bit, written to a temp dir then renamed.

checkpoints/step-000040/ holds model.safetensors, optimizer.pt, scheduler.pt, rng-<rank>.pt and, written
last, state.json (step, epoch, position in the epoch). A folder without state.json is never loaded.
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
from safetensors.torch import load_model, save_model

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


def save(folder: Path, *, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: dict[str, Any],
         rank: int, main: bool, barrier: Any, keep: int) -> Path:
    """Write a checkpoint atomically (every process writes its RNG; the main process the rest)."""
    target = folder / f"step-{state['step']:06d}"
    tmp = folder / f".tmp-step-{state['step']:06d}"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng-{rank}.pt")
    if main:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    barrier()
    if main:
        (tmp / STATE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        for old in sorted(p for p in folder.glob("step-*") if (p / STATE).is_file())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return target


def load(folder: Path, *, model: torch.nn.Module, optimizer: Any, scheduler: Any, rank: int) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this process's RNG; return the saved trainer state."""
    load_model(model, str(folder / "model.safetensors"))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = folder / f"rng-{rank}.pt"
    set_rng_state(torch.load(rng if rng.exists() else folder / "rng-0.pt", weights_only=True))
    return json.loads((folder / STATE).read_text())
