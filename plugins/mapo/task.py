"""MaPO / Diffusion-DPO as a TrainTask: only the UNet trains; VAE (fp32) and text encoders stay frozen. The
objectives (the MaPO paper) take `mse_w`, `mse_l`: the mean over C, H, W of (model_pred − target)² for the winner
and the loser of each pair, noised with the same noise at the same timestep."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.plugins.mapo.data import ImagePair, paired_transform
from lmlab.plugins.mapo.models import DiffusionParts


def denoising_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over every non-batch dimension, in float32."""
    return (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))


def snr_weight(x: torch.Tensor, s: float) -> torch.Tensor:
    """f(x) = s·x / (exp(s·x) − 1): decreasing in the error x, f(0) = 1 (MaPO's log-odds surrogate)."""
    sx = s * x
    return torch.where(sx == 0, torch.ones_like(sx), sx / torch.expm1(sx))


def mapo_terms(mse_w: torch.Tensor, mse_l: torch.Tensor, *, beta: float, snr_value: float,
               num_timesteps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair MaPO loss: mse_w − β·log σ(T·(f(mse_w) − f(mse_l))); mean over pairs gives L (docs/methods.md#mapo)."""
    f_w, f_l = snr_weight(mse_w, snr_value), snr_weight(mse_l, snr_value)
    margin = F.logsigmoid(num_timesteps * (f_w - f_l))
    return mse_w - beta * margin, {"mse_w": mse_w, "mse_l": mse_l, "f_w": f_w, "f_l": f_l, "margin": margin}


def dpo_terms(mse_w: torch.Tensor, mse_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, *,
              beta_dpo: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair Diffusion-DPO loss: −log σ(−½·β·((mse_w − mse_l) − (ref_w − ref_l)))."""
    inside = -0.5 * beta_dpo * ((mse_w - mse_l) - (ref_w - ref_l))
    return -F.logsigmoid(inside), {"mse_w": mse_w, "mse_l": mse_l, "ref_w": ref_w, "ref_l": ref_l,
                                   "implicit_acc": (inside > 0).float()}


class DiffusionPreferenceTask:
    """Winner and loser latents get the same noise and the same timestep t ~ U{0..T-1} (docs/methods.md#mapo)."""

    def __init__(self, pairs: list[ImagePair], parts: DiffusionParts, *, loss: str, beta: float, snr_value: float,
                 beta_dpo: float, resolution: int, seed: int, cache_latents: bool,
                 reference: torch.nn.Module | None, device: torch.device) -> None:
        self.pairs, self.parts, self.kind = pairs, parts, loss
        self.beta, self.snr_value, self.beta_dpo = beta, snr_value, beta_dpo
        self.resolution, self.seed, self.device = resolution, seed, device
        self.reference = reference
        self.cache: dict[int, tuple[torch.Tensor, list[int]]] | None = {} if cache_latents else None
        for module in (parts.vae, parts.text_encoder, parts.text_encoder_2, reference):
            if module is not None:
                module.to(device)

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.pairs), generator=generator).tolist()
        order += [order[i % len(order)] for i in range(-len(order) % global_batch)]  # repeat to whole batches
        return [order[i:i + global_batch] for i in range(0, len(order), global_batch)]

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, *, sample: bool = True) -> torch.Tensor:
        """VAE latents, scaled, always in fp32 (outside the loop's bf16 autocast, so `--cache-latents` and
        per-step encoding give the same latents); `sample=False` takes the posterior mode (cache, evaluation)."""
        vae = self.parts.vae
        with torch.autocast(self.device.type, enabled=False):
            dist = vae.encode(pixels.to(self.device, torch.float32)).latent_dist
            return (dist.sample() if sample else dist.mode()) * vae.config.scaling_factor

    def _cached(self, index: int) -> tuple[torch.Tensor, list[int]]:
        if index not in self.cache:
            winner, loser = self.pairs[index].images()
            w, lo, time_ids = paired_transform(winner, loser, self.resolution, random=False)
            self.cache[index] = (self.encode_images(torch.stack([w, lo]), sample=False).cpu(), time_ids)
        return self.cache[index]

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        if self.cache is not None:
            latents, time_ids = zip(*(self._cached(i) for i in indices), strict=True)
            batch["latents"] = torch.stack(latents, dim=1).flatten(0, 1)  # [2B, ...]: winners, then losers
        else:
            pairs = [paired_transform(*self.pairs[i].images(), self.resolution, random=True) for i in indices]
            winners, losers, time_ids = zip(*pairs, strict=True)
            batch["pixel_values"] = torch.stack(winners + losers)
        batch["time_ids"] = torch.tensor([ids + [self.resolution, self.resolution] for ids in time_ids],
                                         dtype=torch.float32)
        return {**batch, **self.collate_text([self.pairs[i].caption for i in indices])}

    def collate_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Token ids padded to each tokenizer's model_max_length: `input_ids`, and `input_ids_2` for SDXL."""
        tokenizers = {"input_ids": self.parts.tokenizer, "input_ids_2": self.parts.tokenizer_2}
        return {key: tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                         return_tensors="pt").input_ids for key, tok in tokenizers.items() if tok is not None}

    @torch.no_grad()
    def encode_text(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SDXL: concat(penultimate hidden states of both encoders), pooled projection of the second."""
        parts = self.parts
        ids = batch["input_ids"].to(self.device)
        if not parts.is_sdxl:
            return parts.text_encoder(ids)[0], None
        first = parts.text_encoder(ids, output_hidden_states=True)
        second = parts.text_encoder_2(batch["input_ids_2"].to(self.device), output_hidden_states=True)
        return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds

    def denoise(self, unet: torch.nn.Module, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                text: tuple[torch.Tensor, torch.Tensor | None], time_ids: torch.Tensor) -> torch.Tensor:
        """Per-sample error of `unet` on latents noised at `timesteps` (pairs stacked winners-then-losers)."""
        scheduler = self.parts.noise_scheduler
        noisy = scheduler.add_noise(latents, noise, timesteps)
        epsilon = self.parts.prediction_type == "epsilon"
        target = noise if epsilon else scheduler.get_velocity(latents, noise, timesteps)
        states, pooled = text
        extra = {}
        if pooled is not None:
            extra["added_cond_kwargs"] = {"text_embeds": pooled.repeat(2, 1), "time_ids": time_ids.repeat(2, 1)}
        pred = unet(noisy, timesteps, encoder_hidden_states=states.repeat(2, 1, 1), **extra).sample
        return denoising_error(pred, target)

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"pairs": float(batch["time_ids"].shape[0])}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pairs = batch["time_ids"].shape[0]
        latents = batch["latents"] if "latents" in batch else self.encode_images(batch["pixel_values"])
        text = self.encode_text(batch)
        # drawn where the latents are, from that device's generator (each process's own stream once seeded)
        noise = torch.randn_like(latents[:pairs]).repeat(2, 1, 1, 1)
        steps = self.parts.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (pairs,), device=latents.device).repeat(2)
        error = self.denoise(model, latents, noise, timesteps, text, batch["time_ids"])
        mse_w, mse_l = error[:pairs], error[pairs:]
        if self.kind == "mapo":
            per_pair, terms = mapo_terms(mse_w, mse_l, beta=self.beta, snr_value=self.snr_value,
                                         num_timesteps=steps)
        else:
            with torch.no_grad():
                ref = self.denoise(self.reference, latents, noise, timesteps, text, batch["time_ids"])
            per_pair, terms = dpo_terms(mse_w, mse_l, ref[:pairs], ref[pairs:], beta_dpo=self.beta_dpo)
        n = totals["pairs"]
        metrics = {key: value.detach().float().sum() / n for key, value in terms.items()}
        metrics["win_rate"] = (mse_w < mse_l).float().sum() / n
        return per_pair.sum() / n, metrics
