"""The training step as §2 specifies it: winner and loser get the same noise and the same timestep."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmlab.core.files.records import SkipLog, load_records
from lmlab.plugins.mapo.data import FIELDS, build_pairs
from lmlab.plugins.mapo.models import load_diffusion
from lmlab.plugins.mapo.task import DiffusionPreferenceTask


class RecordingUNet(torch.nn.Module):
    """Stands in for the UNet: remembers what it was called with and predicts zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, **kwargs: object) -> SimpleNamespace:
        self.calls.append((sample.detach().clone(), timesteps.clone()))
        return SimpleNamespace(sample=sample * 0 * self.scale)


@pytest.mark.parametrize("loss", ["mapo", "dpo"])
def test_winner_and_loser_share_noise_and_timestep(pairs: Path, loss: str, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("LMLAB_HOME", str(tmp_path / "home"))
    parts = load_diffusion("tiny-sdxl")
    data = build_pairs(load_records(pairs, required=FIELDS), SkipLog())
    reference = RecordingUNet()
    task = DiffusionPreferenceTask(data, parts, loss=loss, beta=0.1, snr_value=0.5, beta_dpo=5000.0, resolution=64,
                                   seed=0, cache_latents=True, reference=reference, device=torch.device("cpu"))
    batch = task.collate([0, 1, 2])
    # make the winner's and the loser's latents identical: then identical noise gives identical noisy inputs
    batch["latents"][3:] = batch["latents"][:3]
    unet = RecordingUNet()
    task.loss(unet, batch, task.counts(batch))
    sample, timesteps = unet.calls[0]
    assert torch.equal(timesteps[:3], timesteps[3:])
    assert torch.equal(sample[:3], sample[3:])
    assert not torch.equal(sample[0], sample[1])  # but different pairs get different noise
    if loss == "dpo":  # the reference sees exactly what the policy saw
        ref_sample, ref_steps = reference.calls[0]
        assert torch.equal(ref_sample, sample) and torch.equal(ref_steps, timesteps)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(pairs: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    """--gradient-checkpointing trades memory for recomputation; the step it takes must not change."""
    monkeypatch.setenv("LMLAB_HOME", str(tmp_path / "home"))
    parts = load_diffusion("tiny-sdxl")
    data = build_pairs(load_records(pairs, required=FIELDS), SkipLog())
    task = DiffusionPreferenceTask(data, parts, loss="mapo", beta=0.1, snr_value=0.5, beta_dpo=5000.0,
                                   resolution=64, seed=0, cache_latents=True, reference=None,
                                   device=torch.device("cpu"))
    batch = task.collate([0, 1])
    unet = parts.unet.train()

    def step() -> tuple[float, dict[str, torch.Tensor], int]:
        """Loss, gradients, and how many elements the forward kept for the backward."""
        kept: list[int] = []

        def keep(t: torch.Tensor) -> torch.Tensor:
            kept.append(t.numel())
            return t

        unet.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            loss, _ = task.loss(unet, batch, task.counts(batch))
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in unet.named_parameters()}, sum(kept)

    plain_loss, plain_grads, plain_kept = step()
    unet.enable_gradient_checkpointing()
    ckpt_loss, ckpt_grads, ckpt_kept = step()
    assert ckpt_loss == pytest.approx(plain_loss, rel=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    assert ckpt_kept < 0.5 * plain_kept, (ckpt_kept, plain_kept)  # and it does keep less for the backward
