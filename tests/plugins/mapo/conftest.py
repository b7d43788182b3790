"""Small Pick-a-Pic-style fixtures: flat vs noisy images, written per test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def make_pairs(folder: Path, n: int = 6, ties: int = 1, size: int = 64) -> Path:
    """n pairs of (flat, noisy) renderings of a coloured square; the flat one wins; `ties` extra tied rows."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    colours = [(220, 40, 40), (40, 160, 60), (40, 60, 220), (230, 200, 30), (150, 50, 200), (30, 190, 190)]
    for i in range(n + ties):
        base = np.full((size, size, 3), 235, np.uint8)
        base[16:48, 16:48] = colours[i % len(colours)]
        noisy = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(base).save(folder / "img" / f"{i}_flat.png")
        Image.fromarray(noisy).save(folder / "img" / f"{i}_noisy.png")
        flat_first = i % 2 == 0
        first, second = ("flat", "noisy") if flat_first else ("noisy", "flat")
        label = (1, 0) if flat_first else (0, 1)
        if i >= n:
            label = (0.5, 0.5)
        rows.append({"jpg_0": f"img/{i}_{first}.png", "jpg_1": f"img/{i}_{second}.png", "label_0": label[0],
                     "label_1": label[1], "caption": f"a square number {i}"})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    return make_pairs(tmp_path / "data")
