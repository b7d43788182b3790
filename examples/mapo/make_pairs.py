"""Generate the bundled MaPO preference set: procedural shape scenes, flat "cartoon" (winner) vs noisy "photo".

Usage: python examples/mapo/make_pairs.py [--out examples/mapo] [--pairs 48] [--size 64] [--seed 0]

Writes `images/NNNN_a.png`, `images/NNNN_b.png`, `pairs.jsonl` (training rows, a few ties) and
`heldout.jsonl` (evaluation rows, no ties, captions unseen in training) in Pick-a-Pic format:
{"jpg_0": ..., "jpg_1": ..., "label_0": 1, "label_1": 0, "caption": ...}, label 1 marking the winner and
image paths relative to the jsonl's folder. Output is byte-identical for the same arguments.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# (count word, number, shape, noun)
SHAPES = [("a", 1, "circle", "circle"), ("a", 1, "square", "square"), ("a", 1, "triangle", "triangle"),
          ("two", 2, "circle", "circles"), ("two", 2, "square", "squares"), ("three", 3, "triangle", "triangles")]
COLOURS = {"red": (214, 39, 40), "orange": (245, 135, 25), "yellow": (245, 205, 35), "green": (44, 160, 44),
           "blue": (31, 90, 200), "purple": (128, 60, 175), "pink": (240, 120, 185), "brown": (140, 86, 45)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (25, 25, 25), "gray": (140, 140, 140), "blue": (70, 130, 215),
               "green": (90, 175, 90), "yellow": (240, 220, 110)}
OUTLINE = (20, 20, 28)
SUPERSAMPLE = 4
NAME = re.compile(r"^\d{4}_[ab]\.png$")


def all_captions() -> list[tuple[str, int, str, str, str]]:
    """(caption, count, shape, colour, background) for every combination whose colour differs from the background."""
    return [(f"{word} {colour} {noun} on a {bg} background", count, shape, colour, bg)
            for word, count, shape, noun in SHAPES for colour in COLOURS for bg in BACKGROUNDS if colour != bg]


def layout(rng: np.random.Generator, count: int) -> list[tuple[float, float, float, float]]:
    """Non-overlapping (cx, cy, radius, rotation) in unit coordinates."""
    lo, hi = {1: (0.24, 0.32), 2: (0.15, 0.2), 3: (0.12, 0.16)}[count]
    while True:
        items: list[tuple[float, float, float, float]] = []
        for _ in range(200):
            r = float(rng.uniform(lo, hi))
            cx, cy = (float(v) for v in rng.uniform(r + 0.04, 1 - r - 0.04, size=2))
            if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + 0.03) ** 2 for x, y, q, _ in items):
                items.append((cx, cy, r, float(rng.uniform(-0.35, 0.35))))
                if len(items) == count:
                    return items


def polygon(shape: str, cx: float, cy: float, r: float, rot: float, scale: float) -> list[tuple[float, float]]:
    n, start = (4, np.pi / 4) if shape == "square" else (3, -np.pi / 2)
    r = r * (0.95 if shape == "square" else 1.05)
    angles = start + rot + 2 * np.pi * np.arange(n) / n
    return [((cx + r * np.cos(a)) * scale, (cy + r * np.sin(a)) * scale) for a in angles]


def render(size: int, shape: str, colour: str, bg: str, items, outline: bool) -> Image.Image:
    """Flat scene, drawn at SUPERSAMPLE× and downsampled for clean anti-aliased edges."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[bg])
    draw = ImageDraw.Draw(img)
    kw = {"fill": COLOURS[colour], "outline": OUTLINE if outline else None, "width": SUPERSAMPLE if outline else 0}
    for cx, cy, r, rot in items:
        if shape == "circle":
            draw.ellipse([(cx - r) * big, (cy - r) * big, (cx + r) * big, (cy + r) * big], **kw)
        else:
            draw.polygon(polygon(shape, cx, cy, r, rot, big), **kw)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def photo(flat: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Same scene degraded: blur, a directional lighting gradient, blotchy texture and Gaussian pixel noise."""
    size = flat.size[0]
    x = np.asarray(flat.filter(ImageFilter.GaussianBlur(radius=1.2)), dtype=np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    light = 1.0 + 0.45 * (np.cos(theta) * xx + np.sin(theta) * yy)
    coarse = rng.normal(0, 1, size=(8, 8)).astype(np.float32)
    blotch = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    texture = 1.0 + 0.06 * np.asarray(blotch, dtype=np.float32)
    x = x * (light * texture)[..., None] + rng.normal(0, 9.0, size=x.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), "RGB")


def make_pair(out: Path, index: int, spec, size: int, seed: int, label: float | None) -> dict:
    caption, count, shape, colour, bg = spec
    rng = np.random.default_rng([seed, index])
    items = layout(rng, count)
    cartoon = render(size, shape, colour, bg, items, outline=True)
    noisy = photo(render(size, shape, colour, bg, items, outline=False), rng)
    winner_first = bool(rng.integers(2))
    first, second = (cartoon, noisy) if winner_first else (noisy, cartoon)
    paths = [f"images/{index:04d}_a.png", f"images/{index:04d}_b.png"]
    for img, rel in zip((first, second), paths, strict=True):
        img.save(out / rel, format="PNG", optimize=True)
    if label is None:
        label_0, label_1 = (1, 0) if winner_first else (0, 1)
    else:
        label_0 = label_1 = label
    return {"jpg_0": paths[0], "jpg_1": paths[1], "label_0": label_0, "label_1": label_1, "caption": caption}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--pairs", type=int, default=48, help="training pairs (pairs.jsonl)")
    parser.add_argument("--heldout", type=int, default=12, help="evaluation pairs (heldout.jsonl), no ties")
    parser.add_argument("--ties", type=int, default=4, help="training rows labelled 0.5/0.5")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    specs = all_captions()
    total = args.pairs + args.heldout
    if total > len(specs) or args.ties > args.pairs:
        parser.error(f"at most {len(specs)} distinct captions and ties <= pairs")
    rng = np.random.default_rng(args.seed)
    chosen = [specs[i] for i in rng.choice(len(specs), size=total, replace=False)]
    ties = set(rng.choice(args.pairs, size=args.ties, replace=False).tolist())

    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.iterdir():
        if NAME.match(stale.name):
            stale.unlink()
    rows = [make_pair(args.out, i, chosen[i], args.size, args.seed, 0.5 if i in ties else None) for i in range(total)]
    write_jsonl(args.out / "pairs.jsonl", rows[: args.pairs])
    write_jsonl(args.out / "heldout.jsonl", rows[args.pairs :])
    nbytes = sum(p.stat().st_size for p in images.iterdir() if NAME.match(p.name))
    print(f"wrote {args.pairs} training pairs ({args.ties} ties), {args.heldout} held-out pairs, "
          f"{2 * total} images ({nbytes / 1e6:.2f} MB) under {args.out}")


if __name__ == "__main__":
    main()
