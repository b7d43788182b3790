"""What `lmlab bench mapo`'s systems train on, the same for both (docs/benchmarks.md#mapo-vs-diffusion-dpo): its pairs
(`--data`, the bundled ones, else synthetic flat-vs-noisy pairs), for `--unet-scale N` a model folder with a wider
random-init UNet, and in each worker train-mapo's task with the batches of every step, collated once."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from lmlab.core.kernel.errors import LmlabError

SYNTHETIC_PAIRS = 32


def prepare(opts: Any, settings: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """The parent's part (`Benchmark.prepare`): the pairs the workers load (settings["data"] says which) and, for
    --unet-scale N, the wider UNet's folder."""
    data_path, settings["data"] = _pairs(opts.data, scratch / "pairs")
    load = wider_unet_folder(opts.model, opts.unet_scale, opts.seed, scratch / "model") if opts.unet_scale > 1 \
        else opts.model
    return {"load": load, "data_path": data_path}


def _pairs(data: str | None, scratch: Path) -> tuple[str, str]:
    """(path the workers load, what the report says about it): --data, the bundled pairs, or synthetic pairs."""
    from lmlab.core.files.records import example

    if data:
        return data, data
    with contextlib.suppress(LmlabError):  # no bundled examples folder: synthetic pairs
        if (bundled := example("mapo/pairs.jsonl")).is_file():
            return str(bundled), "examples/mapo/pairs.jsonl (bundled)"
    return str(synthetic_pairs(scratch, SYNTHETIC_PAIRS)), f"{SYNTHETIC_PAIRS} synthetic 64×64 flat-vs-noisy pairs"


def synthetic_pairs(folder: Path, n: int, size: int = 64) -> Path:
    """n Pick-a-Pic-style pairs (a flat coloured square wins over a noisy copy) as JSONL with PNG paths."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    colours = [(220, 40, 40), (40, 160, 60), (40, 60, 220), (230, 200, 30), (150, 50, 200), (30, 190, 190)]
    rows = []
    for i in range(n):
        flat = np.full((size, size, 3), 235, np.uint8)
        flat[size // 4:3 * size // 4, size // 4:3 * size // 4] = colours[i % len(colours)]
        noisy = np.clip(flat + rng.normal(0, 40, flat.shape), 0, 255).astype(np.uint8)
        Image.fromarray(flat).save(folder / "img" / f"{i}_flat.png")
        Image.fromarray(noisy).save(folder / "img" / f"{i}_noisy.png")
        flat_first = i % 2 == 0
        first, second = ("flat", "noisy") if flat_first else ("noisy", "flat")
        rows.append({"jpg_0": f"img/{i}_{first}.png", "jpg_1": f"img/{i}_{second}.png",
                     "label_0": int(flat_first), "label_1": int(not flat_first), "caption": f"a square number {i}"})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def wider_unet_folder(model: str, scale: int, seed: int, target: Path) -> str:
    """A diffusers folder sharing every part of `model` (symlinks) except the UNet: the same UNet config with
    channel widths × scale, random init from `seed`."""
    import torch
    from diffusers import UNet2DConditionModel

    from lmlab.plugins.mapo.models import PRESETS, tiny_sdxl_folder

    source = tiny_sdxl_folder() if model in PRESETS else Path(model).expanduser()
    if not (source / "unet" / "config.json").is_file():
        raise LmlabError(f"--unet-scale needs tiny-sdxl or a local diffusers folder with unet/config.json; "
                         f"'{model}' is neither.", hint="drop --unet-scale, or pass --model tiny-sdxl")
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name != "unet":
            (target / entry.name).symlink_to(entry.resolve())
    config = dict(UNet2DConditionModel.load_config(str(source / "unet")))
    config["block_out_channels"] = [c * scale for c in config["block_out_channels"]]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(config)
    unet.save_pretrained(str(target / "unet"))
    return str(target)


def training_inputs(system: str, settings: dict[str, Any], task_class: type, device: Any) -> tuple[Any, list[Any], Any]:
    """train-mapo's task (`task_class`: `DiffusionPreferenceTask` or a subclass) with `system` as its loss, its UNet on
    `device`, and the first steps' batches (`task.batches`, as the loop orders them) with each batch collated once
    after seeding, so both systems get the same random crops and flips."""
    import torch

    from lmlab.core.files.records import SkipLog, load_records
    from lmlab.plugins.mapo.data import FIELDS, build_pairs
    from lmlab.plugins.mapo.models import load_diffusion

    pairs = build_pairs(load_records(settings["data_path"], required=FIELDS), SkipLog())
    parts = load_diffusion(settings["load"])
    parts.unet.to(device)  # on the device before memory is measured, as the frozen parts are
    resolution = settings["resolution"] or parts.unet.config.sample_size * 2 ** (
        len(parts.vae.config.block_out_channels) - 1)
    task = task_class(pairs, parts, loss=system, beta=settings["beta"], snr_value=settings["snr_value"],
                      beta_dpo=settings["beta_dpo"], resolution=resolution, seed=settings["seed"],
                      cache_latents=settings["cache_latents"], reference=None, device=device)
    n_steps = settings["warmup_steps"] + settings["timed_steps"]
    order = [batch for epoch in range(n_steps) for batch in task.batches(epoch, settings["batch_size"])][:n_steps]
    torch.manual_seed(settings["seed"])
    return task, order, [task.collate(indices) for indices in order]
