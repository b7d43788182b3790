"""Pick-a-Pic-style preference pairs → (winner, loser, caption), and the paired image transform.

Rows have `jpg_0`, `jpg_1` (image bytes, {"bytes", "path"} dicts as HF datasets store them, PIL images, or
file paths relative to the data file), `label_0`, `label_1` and `caption`. Ties (label_0 == label_1) are
dropped and counted; the winner goes first. Both images of a pair get the same resize, crop and flip.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lmlab.core.files.records import Record, SkipLog
from lmlab.core.kernel.errors import DataError

FIELDS = ("jpg_0", "jpg_1", "label_0", "label_1", "caption")


@dataclass
class ImagePair:
    winner: Any
    loser: Any
    caption: str
    record: Record
    winner_field: str
    loser_field: str

    def images(self) -> tuple[Image.Image, Image.Image]:
        return (open_image(self.winner, self.record, self.winner_field),
                open_image(self.loser, self.record, self.loser_field))


def _source(value: Any, record: Record, field: str) -> Any:
    """Bytes, a PIL image, or an absolute path; relative paths are taken from the data file's folder."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, Image.Image)):
        return value
    if isinstance(value, str) and value:
        path = Path(value)
        if not path.is_absolute():
            path = Path(record.path).parent / path
        if not path.is_file():
            raise DataError(f"image file not found: {path}", path=record.path, line=record.line, field=field,
                            hint="paths are relative to the data file's folder")
        return path
    raise DataError("expected image bytes or a path.", path=record.path, line=record.line, field=field,
                    hint="Pick-a-Pic rows carry jpg_0/jpg_1 as bytes; JSONL rows may give file paths")


def open_image(source: Any, record: Record, field: str) -> Image.Image:
    """Decode to RGB; a corrupt image is a DataError naming its row and field."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode the image ({exc}).", path=record.path, line=record.line, field=field,
                        hint="re-export the image as PNG or JPEG, or drop the row") from exc


def build_pairs(records: list[Record], skips: SkipLog) -> list[ImagePair]:
    """Validate every row (images decode, labels are numbers), drop ties, put the winner first."""
    pairs = []
    for record in records:
        label_0, label_1 = (float(record.get(f, (int, float))) for f in ("label_0", "label_1"))
        caption = record.get("caption", (str,))
        if label_0 == label_1:
            skips.add("tie (label_0 == label_1)", record)
            continue
        first, second = ("jpg_0", "jpg_1") if label_0 > label_1 else ("jpg_1", "jpg_0")
        pair = ImagePair(_source(record.get(first), record, first), _source(record.get(second), record, second),
                         caption, record, first, second)
        pair.images()  # fail now, with the row named, rather than mid-training
        pairs.append(pair)
    if not pairs:
        raise DataError(f"no usable pairs: {skips.summary() or 'the data has no rows'}.",
                        path=records[0].path if records else None,
                        hint="MaPO learns from pairs with a preferred image; ties carry no preference")
    return pairs


def paired_transform(winner: Image.Image, loser: Image.Image, resolution: int, *, random: bool,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Resize the shorter side to `resolution`, crop a square, maybe flip, the same for both images: both as
    [3, R, R] in [-1, 1], and SDXL's (orig_h, orig_w, crop_top, crop_left) for the pair."""
    if loser.size != winner.size:
        loser = loser.resize(winner.size, Image.BICUBIC)
    orig_w, orig_h = winner.size
    scale = resolution / min(orig_w, orig_h)
    size = (max(resolution, round(orig_w * scale)), max(resolution, round(orig_h * scale)))
    winner, loser = winner.resize(size, Image.BICUBIC), loser.resize(size, Image.BICUBIC)
    if random:
        top = int(torch.randint(0, size[1] - resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, size[0] - resolution + 1, (1,), generator=generator))
        flip = bool(torch.rand((), generator=generator) < 0.5)
    else:
        top, left, flip = (size[1] - resolution) // 2, (size[0] - resolution) // 2, False

    def prepare(image: Image.Image) -> torch.Tensor:
        image = image.crop((left, top, left + resolution, top + resolution))
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    crop_left = size[0] - left - resolution if flip else left
    return prepare(winner), prepare(loser), [orig_h, orig_w, top, crop_left]
