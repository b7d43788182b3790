"""What MaPO's training changed: the held-out alignment gap, and samples.png (the same prompts and seeds before and
after training, side by side and legible)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    import torch

    from lmlab.plugins.mapo.data import ImagePair
    from lmlab.plugins.mapo.models import DiffusionParts
    from lmlab.plugins.mapo.task import DiffusionPreferenceTask

CELL = 128  # smallest side of an image in the grid; smaller samples are upscaled by a whole factor (nearest)
GAP = 8
FONT_SIZE = 13
CAPTION_LINES = 2
Box = tuple[int, int, int, int]
TIMESTEPS = (100, 300, 500, 700, 900)  # where heldout_gap measures


def heldout_gap(task: DiffusionPreferenceTask, unet: torch.nn.Module, pairs: list[ImagePair],
                seed: int = 0) -> dict[str, float]:
    """Mean of mse_w − mse_l (negative: the model fits the preferred image better) and the fraction of
    (pair, timestep) cases where the winner's error is lower, with fixed noise (from a generator on the task's
    device, seeded by `seed`) at fixed timesteps."""
    import torch

    from lmlab.plugins.mapo.data import paired_transform

    was_training = unet.training
    unet.eval()
    generator = torch.Generator(task.device).manual_seed(seed)
    gaps = []
    with torch.no_grad():
        for pair in pairs:
            w, lo, time_ids = paired_transform(*pair.images(), task.resolution, random=False)
            latents = task.encode_images(torch.stack([w, lo]), sample=False)
            text = task.encode_text(task.collate_text([pair.caption]))
            ids = torch.tensor([time_ids + [task.resolution] * 2], dtype=torch.float32, device=latents.device)
            for t in TIMESTEPS:
                noise = torch.randn(latents[:1].shape, generator=generator, device=latents.device).repeat(2, 1, 1, 1)
                steps = torch.full((2,), t, dtype=torch.long, device=latents.device)
                error = task.denoise(unet, latents, noise, steps, text, ids)
                gaps.append(error[0] - error[1])
    unet.train(was_training)
    gap = torch.stack(gaps)
    mean, lower = torch.stack([gap.mean(), (gap < 0).float().mean()]).tolist()  # the one read from the device
    return {"gap": mean, "winner_lower": lower}


def sample_grid(parts: DiffusionParts, prompts: list[str], resolution: int, steps: int, seed: int) -> list[Any]:
    """One image per prompt with fixed seeds, so before/after differ only by the training. The seeds feed CPU
    generators, as diffusers advises: the pipeline draws its initial latents on the CPU and moves them once, so a
    prompt gives the same start on any device."""
    import torch

    pipe = parts.pipeline()
    pipe.set_progress_bar_config(disable=True)
    images = []
    for i, prompt in enumerate(prompts):
        generator = torch.Generator().manual_seed(seed + i)
        images.append(pipe(prompt=prompt, num_inference_steps=steps, height=resolution, width=resolution,
                           generator=generator, output_type="pil").images[0])
    return images


def _fit(text: str, font: Any, width: int) -> str:
    """`text`, cut with an ellipsis where it is wider than `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """Word-wrapped to `width` pixels in at most CAPTION_LINES lines (the last one ellipsised if cut)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > CAPTION_LINES:
        lines = lines[:CAPTION_LINES - 1] + [" ".join(lines[CAPTION_LINES - 1:])]
    return [_fit(line, font, width) for line in lines] or [""]


def compose_grid(before: list[Any], after: list[Any], prompts: list[str]) -> tuple[Image.Image, list[Box]]:
    """A header naming the columns (before | after), then per prompt a caption band and its two images.

    Returns the grid and each image's box (left, top, right, bottom), row by row, before then after."""
    width, height = before[0].size
    factor = max(1, math.ceil(CELL / min(width, height)))
    cell_w, cell_h = width * factor, height * factor
    font = ImageFont.load_default(size=FONT_SIZE)
    line_h = FONT_SIZE + 4
    grid_w = 3 * GAP + 2 * cell_w
    captions = [_wrap(prompt, font, grid_w - 2 * GAP) for prompt in prompts]
    header_h = line_h + GAP
    grid_h = header_h + sum(len(lines) * line_h + GAP // 2 + cell_h + GAP for lines in captions)
    grid = Image.new("RGB", (grid_w, grid_h), "white")
    draw = ImageDraw.Draw(grid)
    lefts = (GAP, 2 * GAP + cell_w)
    for left, name in zip(lefts, ("before", "after"), strict=True):
        draw.text((left + cell_w // 2, GAP // 2), name, fill="black", font=font, anchor="mt")
    boxes: list[Box] = []
    top = header_h
    for lines, images in zip(captions, zip(before, after, strict=True), strict=True):
        for i, line in enumerate(lines):
            draw.text((GAP, top + i * line_h), line, fill="#333333", font=font)
        top += len(lines) * line_h + GAP // 2
        for left, image in zip(lefts, images, strict=True):
            grid.paste(image.convert("RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST), (left, top))
            boxes.append((left, top, left + cell_w, top + cell_h))
        top += cell_h + GAP
    return grid, boxes


def save_grid(before: list[Any], after: list[Any], prompts: list[str], out: Path) -> Path:
    """Rows: prompts (captioned above their images); columns: before | after training."""
    grid, _ = compose_grid(before, after, prompts)
    grid.save(out)
    return out
