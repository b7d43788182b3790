"""Alignment on held-out pairs: does the winner's denoising error fall relative to the loser's?"""

from __future__ import annotations

import torch

from lmlab.plugins.mapo.data import ImagePair, paired_transform
from lmlab.plugins.mapo.task import DiffusionPreferenceTask

TIMESTEPS = (100, 300, 500, 700, 900)


@torch.no_grad()
def heldout_gap(task: DiffusionPreferenceTask, unet: torch.nn.Module, pairs: list[ImagePair],
                seed: int = 0) -> dict[str, float]:
    """Mean of mse_w − mse_l (negative: the model fits the preferred image better) and the fraction of
    (pair, timestep) cases where the winner's error is lower, with fixed noise (from a generator on the task's
    device, seeded by `seed`) at fixed timesteps."""
    was_training = unet.training
    unet.eval()
    generator = torch.Generator(task.device).manual_seed(seed)
    gaps = []
    for pair in pairs:
        w, lo, time_ids = paired_transform(*pair.images(), task.resolution, random=False)
        latents = task.encode_images(torch.stack([w, lo]), sample=False)
        batch = task.collate_text([pair.caption])
        text = task.encode_text(batch)
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
