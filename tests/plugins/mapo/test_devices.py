"""MaPO on a GPU, checked on the CPU: the VAE encodes in fp32 whatever the loop's autocast (cached and per-step
latents agree), noise and timesteps follow the process's torch seed, the UNet sits with the VAE and text encoders
before sampling, and the after-training samples come from the gathered weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmlab.core.files.records import SkipLog, load_records
from lmlab.plugins.mapo import train as mapo_train
from lmlab.plugins.mapo.data import FIELDS, build_pairs, paired_transform
from lmlab.plugins.mapo.models import DiffusionParts, load_diffusion
from lmlab.plugins.mapo.options import MapoOptions
from lmlab.plugins.mapo.task import DiffusionPreferenceTask
from tests.plugins.mapo.conftest import make_pairs

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiffusionParts]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMLAB_HOME", str(tmp_path_factory.mktemp("home")))
        yield load_diffusion("tiny-sdxl")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("data"), n=3, ties=0)


def make_task(parts: DiffusionParts, data_file: Path, *, cache: bool) -> DiffusionPreferenceTask:
    data = build_pairs(load_records(data_file, required=FIELDS), SkipLog())
    return DiffusionPreferenceTask(data, parts, loss="mapo", beta=0.1, snr_value=0.5, beta_dpo=5000.0,
                                   resolution=64, seed=0, cache_latents=cache, reference=None, device=CPU)


def test_the_vae_encodes_in_fp32_outside_the_loops_autocast(parts: DiffusionParts, data_file: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    task = make_task(parts, data_file, cache=False)
    seen = []
    encode = parts.vae.encode

    def recording(pixels: torch.Tensor) -> object:
        seen.append((pixels.dtype, torch.is_autocast_enabled("cpu")))
        return encode(pixels)

    monkeypatch.setattr(parts.vae, "encode", recording)
    pixels = torch.rand(2, 3, 64, 64, dtype=torch.bfloat16) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        latents = task.encode_images(pixels, sample=False)
    assert seen == [(torch.float32, False)]
    assert latents.dtype == torch.float32


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no native bf16")
def test_cached_latents_equal_the_ones_encoded_under_bf16_autocast(parts: DiffusionParts, data_file: Path) -> None:
    cached = make_task(parts, data_file, cache=True).collate([0, 1])["latents"]  # collated outside autocast
    task = make_task(parts, data_file, cache=False)
    winners, losers = [], []
    for pair in task.pairs[:2]:
        w, lo, _ = paired_transform(*pair.images(), 64, random=False)
        winners.append(w)
        losers.append(lo)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the loop's --precision bf16 runs the loss under
        encoded = task.encode_images(torch.stack(winners + losers), sample=False)
    torch.testing.assert_close(encoded, cached, rtol=0, atol=0)


def test_noise_and_timesteps_follow_the_torch_seed(parts: DiffusionParts, data_file: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    task = make_task(parts, data_file, cache=True)
    batch = task.collate([0, 1])
    drawn = []

    def recording(unet: object, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                  *args: object) -> torch.Tensor:
        assert noise.device == timesteps.device == latents.device
        drawn.append((noise, timesteps))
        return torch.rand(latents.shape[0])

    monkeypatch.setattr(task, "denoise", recording)
    for seed in (1, 1, 2):  # a resumed process replays its stream; another process's seed draws its own
        torch.manual_seed(seed)
        task.loss(parts.unet, batch, {"pairs": 2.0})
    (noise_a, steps_a), (noise_b, steps_b), (noise_c, steps_c) = drawn
    assert torch.equal(noise_a, noise_b) and torch.equal(steps_a, steps_b)
    assert not torch.equal(noise_a, noise_c) and not torch.equal(steps_a, steps_c)


def trainer_after_setup(parts: DiffusionParts, data_file: Path) -> mapo_train.MapoTrainer:
    trainer = mapo_train.MapoTrainer(MapoOptions(data=str(data_file), samples=2))
    trainer.parts, trainer.resolution, trainer.held = parts, 64, []
    trainer.pairs = build_pairs(load_records(data_file, required=FIELDS), SkipLog())
    return trainer


def test_the_unet_joins_the_other_parts_before_sampling_without_heldout(parts: DiffusionParts,
                                                                        data_file: Path) -> None:
    trainer = trainer_after_setup(parts, data_file)
    unet = torch.nn.Linear(2, 2)  # stands in for the UNet (on the CPU, as loaded)
    trainer.before_training(SimpleNamespace(main=False), unet, SimpleNamespace(device=torch.device("meta")))
    assert trainer.before_gap is None and unet.weight.device.type == "meta"


def test_after_samples_come_from_the_gathered_model(parts: DiffusionParts, data_file: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = trainer_after_setup(parts, data_file)
    trainer.prompts, trainer.before = ["a", "b"], ["before-a", "before-b"]
    gathered = torch.nn.Linear(2, 2)  # what `train` returns under FSDP: a plain copy, not the sharded parts.unet
    sampled_with = []
    monkeypatch.setattr(mapo_train, "_save_unet", lambda *args: None)
    monkeypatch.setattr(mapo_train, "sample_grid", lambda used, *args: sampled_with.append(used.unet) or ["x"])
    monkeypatch.setattr(mapo_train, "save_grid", lambda before, after, prompts, out: out)
    summary: dict[str, object] = {}
    trainer.save({"model": gathered}, SimpleNamespace(path=tmp_path), summary)
    assert sampled_with == [gathered] and summary["samples"] == str(tmp_path / "samples.png")
    assert trainer.parts.unet is parts.unet
