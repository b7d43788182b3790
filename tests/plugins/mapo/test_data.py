"""Pick-a-Pic rows: ties dropped and counted, winner first, same transform for both images, clear errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lmlab.core.files.records import SkipLog, load_records
from lmlab.core.kernel.errors import DataError
from lmlab.plugins.mapo.data import FIELDS, build_pairs, paired_transform
from tests.conftest import run_cli


def test_ties_are_dropped_and_the_winner_goes_first(pairs: Path) -> None:
    skips = SkipLog()
    built = build_pairs(load_records(pairs, required=FIELDS), skips)
    assert len(built) == 6 and skips.as_dict() == {"tie (label_0 == label_1)": 1}
    for pair in built:
        winner, loser = pair.images()
        assert Path(str(pair.winner)).name.endswith("_flat.png")
        # the flat rendering has far less pixel variance than the noisy one
        assert np.asarray(winner, dtype=float).std() < np.asarray(loser, dtype=float).std()


def test_bytes_images_work_like_paths(pairs: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    for row in rows:
        for key in ("jpg_0", "jpg_1"):
            row[key] = {"bytes": (pairs.parent / row[key]).read_bytes(), "path": None}
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(saved)
    assert len(build_pairs(load_records(saved, required=FIELDS), SkipLog())) == 6


def test_paired_transform_applies_the_same_crop_and_flip() -> None:
    image = Image.new("RGB", (96, 64))
    image.paste((255, 0, 0), (0, 0, 10, 64))  # a red bar on the left edge
    twin = image.copy()
    flipped_seen = set()
    for seed in range(12):
        w, lo, ids = paired_transform(image, twin, 48, random=True, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(w, lo)
        assert w.shape == (3, 48, 48) and w.min() >= -1 and w.max() <= 1
        assert ids[:2] == [64, 96]
        flipped_seen.add(bool(w[0, :, -1].mean() > w[0, :, 0].mean()))
    assert flipped_seen == {True, False}


@pytest.mark.parametrize("problem", ["corrupt", "missing", "all-ties"])
def test_bad_images_and_all_ties_are_exit_2(tmp_path: Path, pairs: Path, problem: str) -> None:
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    if problem == "corrupt":
        (pairs.parent / rows[2]["jpg_1"]).write_bytes(b"not a png at all")
        expected = ["pairs.jsonl:3", "jpg_1", "decode"]
    elif problem == "missing":
        (pairs.parent / rows[1]["jpg_0"]).unlink()
        expected = ["pairs.jsonl:2", "jpg_0", "not found"]
    else:
        for row in rows:
            row["label_0"] = row["label_1"] = 0.5
        pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
        expected = ["no usable pairs", "tie"]
    result = run_cli("train-mapo", "--data", str(pairs), "--max-steps", "1", "-o", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in expected:
        assert fragment in result.stderr, result.stderr


def test_a_truncated_png_is_a_data_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buffer, format="PNG")
    data = tmp_path / "p.jsonl"
    row = {"jpg_0": "a.png", "jpg_1": "b.png", "label_0": 1, "label_1": 0, "caption": "x"}
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    (tmp_path / "b.png").write_bytes(buffer.getvalue()[:40])
    data.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="jpg_1"):
        build_pairs(load_records(data, required=FIELDS), SkipLog())
