"""samples.png is legible: cells of at least 128 px, captions in their own band, a header naming the columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lmlab.plugins.mapo.samples import CELL, compose_grid, save_grid

PROMPTS = ["a red cube", "a very long prompt about a small blue bird sitting on a branch of an old oak tree in "
           "the rain at dusk, painted in watercolour with soft edges and muted colours"]


def noise(seed: int, size: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def dark(pixels: np.ndarray) -> bool:
    return bool((pixels.min(axis=-1) < 128).any())


def test_cells_are_upscaled_and_captions_never_cover_them(tmp_path: Path) -> None:
    before, after = [noise(1), noise(2)], [noise(3), noise(4)]
    out = save_grid(before, after, PROMPTS, tmp_path / "samples.png")
    saved = Image.open(out).convert("RGB")
    grid, boxes = compose_grid(before, after, PROMPTS)
    assert saved.size == grid.size and len(boxes) == 4
    pixels = np.asarray(saved)
    for box, image in zip(boxes, [before[0], after[0], before[1], after[1]], strict=True):
        left, top, right, bottom = box
        assert right - left >= CELL and bottom - top >= CELL
        upscaled = np.asarray(image.resize((right - left, bottom - top), Image.Resampling.NEAREST))
        assert np.array_equal(pixels[top:bottom, left:right], upscaled)  # no caption or header drawn over it
    assert boxes[0][1] == boxes[1][1] and boxes[0][2] <= boxes[1][0]  # before | after, side by side
    header_bottom = boxes[0][1]
    for row, (box, next_box) in enumerate(zip(boxes[::2], boxes[2::2], strict=False)):
        assert dark(pixels[box[3]:next_box[1]]), f"row {row + 1} has no caption band above it"
    assert dark(pixels[:header_bottom, :boxes[0][2]]) and dark(pixels[:header_bottom, boxes[1][0]:])
    _, one_line = compose_grid(before, after, [PROMPTS[0], "a blue bird"])
    assert boxes[2][1] - boxes[1][3] > one_line[2][1] - one_line[1][3]  # the long prompt wraps: a taller band


def test_large_samples_keep_their_size(tmp_path: Path) -> None:
    grid, boxes = compose_grid([noise(1, 160)], [noise(2, 160)], ["x"])
    assert [(r - left, b - t) for left, t, r, b in boxes] == [(160, 160), (160, 160)]
    assert grid.width >= 2 * 160
