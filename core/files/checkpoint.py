"""Durable checkpoints: everything needed to continue bit-for-bit, written to a temp dir, fsynced, then renamed.

checkpoints/step-000040/ holds model.safetensors, optimizer.pt, scheduler.pt, rng-<rank>.pt (each process its own:
the loop seeds them differently) and, written last, state.json: step, epoch, position in the epoch, whether FSDP
wrote it, and a manifest ("files") with every other file's size and sha256 (one from before manifests is intact
when its state.json reads). A crash or a power loss leaves either no new checkpoint or a whole one; a failed write
(a full disk above all) removes the temp folder and raises the same error on every process, so none is left waiting.

Under FSDP2 the shards are gathered whole onto process 0 and written to the same files; loading reads them there
and hands each process its shard. Nothing is unpickled (safetensors, `torch.load(weights_only=True)`), always with
a `map_location` (AdamW's moments onto this process's device, the rest onto the CPU), so no process loads a tensor
onto the GPU that saved it (N copies on cuda:0 under DDP).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from rich.markup import escape
from safetensors.torch import load_file, load_model, save_file, save_model

from lmlab.core.files.atomic import disk_full, fsync_path, honour_umask, is_disk_full, rename_into_place
from lmlab.core.kernel.console import log
from lmlab.core.kernel.errors import CheckpointWriteFailed, LmlabError

STATE = "state.json"
FILES = "files"  # the manifest's key in state.json
MODEL, OPTIMIZER, SCHEDULER = "model.safetensors", "optimizer.pt", "scheduler.pt"


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
    """The newest intact checkpoint folder, or None."""
    return _newest_intact(checkpoints)[0]


def resume_point(checkpoints: Path, accelerator: Accelerator) -> Path:
    """The checkpoint every process resumes from: the main process checks them newest first, warns about each
    damaged one and tells the others; one LmlabError on every process when none is intact."""
    box: list[Any] = [None, []]
    if accelerator.is_main_process:
        found, damaged = _newest_intact(checkpoints)
        for folder, problem in damaged:
            log(f"[yellow]warning:[/yellow] checkpoint {escape(str(folder))} is damaged ({escape(problem)}); "
                "trying the previous one")
        box = [str(found) if found else None, [f"{folder.name} ({problem})" for folder, problem in damaged]]
    if accelerator.num_processes > 1:
        broadcast_object_list(box)
    found, damaged = box
    if found is not None:
        return Path(found)
    if damaged:
        raise LmlabError(f"{checkpoints}: no intact checkpoint to resume from; damaged: {'; '.join(damaged)}.",
                         hint="start the run again without --resume")
    raise LmlabError(f"{checkpoints.parent}: no complete checkpoint to resume from.",
                     hint="a run saves every --save-every steps; start it again without --resume")


def damage(folder: Path, *, checksums: bool = True) -> str | None:
    """What is wrong with a checkpoint folder (a missing or unreadable state.json, a missing file, a size or,
    with `checksums`, a sha256 that differs from the manifest), or None when it is intact."""
    if not (folder / STATE).is_file():
        return f"no {STATE}"
    try:
        text = (folder / STATE).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return f"{STATE} is unreadable: {exc}"
    if not text.strip():
        return f"{STATE} is empty"
    try:
        saved = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"{STATE} is unreadable: {exc}"
    if not isinstance(saved, dict) or not isinstance(saved.get("step"), int):
        return f"{STATE} has no step"
    manifest = saved.get(FILES, {})
    if not isinstance(manifest, dict) or not all(isinstance(entry, dict) and {"size", "sha256"} <= entry.keys()
                                                 for entry in manifest.values()):
        return f"{STATE} has a malformed manifest"
    for name, entry in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{name} has {size} bytes, the manifest says {entry['size']}"
        if checksums and _sha256(path) != entry["sha256"]:
            return f"{name} does not match its sha256 checksum"
    return None


def save(folder: Path, accelerator: Accelerator, *, model: torch.nn.Module, optimizer: Any, scheduler: Any,
         state: dict[str, Any], keep: int) -> Path:
    """Write a checkpoint durably from the prepared `model` and `optimizer` (every process writes its RNG
    and, under FSDP, sends its shards; the main process writes the rest, the manifest and state.json). Raises
    DiskFull or CheckpointWriteFailed on every process when any of them fails to write."""
    main = accelerator.is_main_process
    target = folder / f"step-{state['step']:06d}"
    tmp = folder / f".tmp-step-{state['step']:06d}"

    def prepare() -> None:
        if main:
            for stale in folder.glob(".tmp-step-*"):  # left by a run killed mid-save
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True)

    # FSDP: collective, so before any write can fail; every process sends its shards to process 0.
    weights, moments = ((accelerator.get_state_dict(model), _gathered_optimizer(model, optimizer))
                        if accelerator.is_fsdp2 else (None, None))

    def write() -> None:
        _durably(tmp / f"rng-{accelerator.process_index}.pt", lambda path: torch.save(rng_state(), path))
        if not main:
            return
        if accelerator.is_fsdp2:
            _durably(tmp / MODEL, lambda path: save_file(weights, str(path)))
            _durably(tmp / OPTIMIZER, lambda path: torch.save(moments, path))
        else:
            _durably(tmp / MODEL, lambda path: save_model(accelerator.unwrap_model(model), str(path)))
            _durably(tmp / OPTIMIZER, lambda path: torch.save(optimizer.state_dict(), path))
        _durably(tmp / SCHEDULER, lambda path: torch.save(scheduler.state_dict(), path))

    def seal() -> None:
        if main:
            files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
            record = {**state, "fsdp": accelerator.is_fsdp2, FILES: files}
            _durably(tmp / STATE, lambda path: path.write_text(json.dumps(record, indent=2)))
            honour_umask(tmp)  # safetensors writes 0600 whatever the umask
            fsync_path(tmp)

    for step in (prepare, write, seal):
        _together(accelerator, target, tmp, step)
    if main:
        shutil.rmtree(target, ignore_errors=True)
        rename_into_place(tmp, target)
        _rotate(folder, keep, target)
    accelerator.wait_for_everyone()
    return target


def load(folder: Path, accelerator: Accelerator, *, model: torch.nn.Module, optimizer: Any,
         scheduler: Any, seed: int) -> dict[str, Any]:
    """Restore the prepared model and optimizer, the scheduler and this process's RNG; return the saved
    trainer state. A process the saving run did not have (resumed with more processes) seeds its RNGs from
    (`seed`, step, rank) rather than copying another process's stream."""
    saved = json.loads((folder / STATE).read_text())
    saved.pop(FILES, None)
    if saved.get("fsdp", False) != accelerator.is_fsdp2:
        raise LmlabError(f"{folder}: written by a run {'with' if saved.get('fsdp') else 'without'} FSDP, resumed "
                         f"{'with' if accelerator.is_fsdp2 else 'without'} it.",
                         hint="resume with the accelerate config the run started with")
    if accelerator.is_fsdp2:
        from torch.distributed.checkpoint import state_dict as dsd

        options = dsd.StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        main = accelerator.is_main_process
        dsd.set_model_state_dict(model, load_file(folder / MODEL) if main else {}, options=options)
        moments = torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True) if main else {}
        dsd.set_optimizer_state_dict(model, optimizer, moments, options=options)
    else:
        load_model(accelerator.unwrap_model(model), str(folder / MODEL))
        # Straight onto this process's device (a multi-process CPU run names its device "cpu:0", which torch.load
        # does not take: the CPU is "cpu").
        where = accelerator.device if accelerator.device.type != "cpu" else "cpu"
        optimizer.load_state_dict(torch.load(folder / OPTIMIZER, map_location=where, weights_only=True))
    scheduler.load_state_dict(torch.load(folder / SCHEDULER, map_location="cpu", weights_only=True))
    rank = accelerator.process_index
    rng = folder / f"rng-{rank}.pt"
    if rng.exists():
        set_rng_state(torch.load(rng, map_location="cpu", weights_only=True))  # RNG states are CPU byte tensors
    else:
        set_seed(hash((seed, saved["step"], rank)) & 0xFFFF_FFFF)
    return saved


def _gathered_optimizer(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """The optimizer's state with every shard gathered, keyed by parameter name, on process 0 ({} elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _folders(checkpoints: Path) -> list[Path]:
    return sorted(p for p in checkpoints.glob("step-*") if p.is_dir())


def _newest_intact(checkpoints: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint (or None) and every newer damaged one with what is wrong with it."""
    damaged = []
    for folder in reversed(_folders(checkpoints)):
        problem = damage(folder)
        if problem is None:
            return folder, damaged
        damaged.append((folder, problem))
    return None, damaged


def _rotate(folder: Path, keep: int, written: Path) -> None:
    """Delete all but the newest `keep` intact checkpoints (sizes checked, not checksums: that would read every
    kept checkpoint at every save), never the one just written; damaged ones are left for a person to see."""
    intact = [p for p in _folders(folder) if p == written or damage(p, checksums=False) is None]
    for old in intact[:-keep] if keep > 0 else []:
        if old != written:
            shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _durably(path: Path, write: Callable[[Path], Any]) -> None:
    write(path)
    fsync_path(path)


def _together(accelerator: Accelerator, target: Path, tmp: Path, work: Callable[[], None]) -> None:
    """Run this process's part of a save; if it failed on any process, remove the temp folder and raise the same
    error on every process."""
    failure: tuple[bool, str] | None = None
    cause: Exception | None = None
    try:
        work()
    except Exception as exc:  # any write failure must reach every process, or the others wait forever
        cause, failure = exc, (is_disk_full(exc), f"process {accelerator.process_index}: {type(exc).__name__}: {exc}")
    failures = sorted((f for f in gather_object([failure]) if f is not None), reverse=True)  # disk full first
    if not failures:
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    full, detail = failures[0]
    if full:
        raise disk_full(target, detail, what="checkpoint ", hint="free some space, then continue with --resume: the "
                        "temp folder was removed and the previous checkpoint is intact") from cause
    raise CheckpointWriteFailed(f"Could not write checkpoint {target} ({detail}).",
                                hint="fix the cause, then continue with --resume: the temp folder was removed and "
                                     "the previous checkpoint is intact") from cause
