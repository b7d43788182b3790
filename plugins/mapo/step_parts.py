"""Where a MaPO / Diffusion-DPO training step's time goes, for `lmlab bench mapo`'s `step_breakdown_s`: timing
hooks on the real task (its frozen encoders, its reference forward, the end of its loss) and on the loop's AdamW
(torch's global optimizer step hooks); on a GPU each clock waits for the queued work, so the parts add up."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from lmlab.core.bench.worker import clock

PARTS = ("frozen_encoders", "policy_forward", "reference_forward", "backward_and_clip", "optimizer", "rest")


class StepParts:
    """Each step's parts, in seconds (`steps`, one dict per step), and their `breakdown` into `PARTS`."""

    def __init__(self, device: Any = "cpu") -> None:
        import torch

        self.steps: list[dict[str, float]] = []
        self.device = torch.device(device)

    def timed(self, part: str | None, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """call(*args, **kwargs), its time added to `part` of the current step (none before the first step: the
        encodes of --cache-latents at collation)."""
        tick = clock(self.device)
        out = call(*args, **kwargs)
        if part is not None and self.steps:
            self.steps[-1][part] = self.steps[-1].get(part, 0.0) + clock(self.device) - tick
        return out

    def optimizer_hooks(self) -> tuple[Any, Any]:
        """(pre, post) hook handles; the pre hook also closes the backward (and clipping) of the step."""
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        def pre(optimizer: Any, args: Any, kwargs: Any) -> None:
            if isinstance(optimizer, torch.optim.AdamW):
                step = self.steps[-1]
                step["optimizer_start"] = clock(self.device)
                step["backward_and_clip"] = step["optimizer_start"] - step["loss_end"]

        def post(optimizer: Any, args: Any, kwargs: Any) -> None:
            if isinstance(optimizer, torch.optim.AdamW):
                self.steps[-1]["optimizer"] = clock(self.device) - self.steps[-1]["optimizer_start"]

        return register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)

    def breakdown(self, step: dict[str, float], step_time: float) -> dict[str, float]:
        frozen, reference = step.get("frozen_encoders", 0.0), step.get("reference_forward", 0.0)
        parts = {"frozen_encoders": frozen, "policy_forward": step["loss"] - frozen - reference,
                 "reference_forward": reference, "backward_and_clip": step["backward_and_clip"],
                 "optimizer": step["optimizer"]}
        return {**parts, "rest": step_time - sum(parts.values())}

    def medians(self, step_times: list[float], warmup: int) -> dict[str, float]:
        """Each part's median over the steps after the `warmup` first ones (`step_times`: the loop's, per step)."""
        breakdowns = [self.breakdown(p, t) for p, t in zip(self.steps, step_times, strict=True)][warmup:]
        return {k: round(statistics.median(b[k] for b in breakdowns), 5) for k in PARTS}

    @staticmethod
    def line(system: str, medians: dict[str, float]) -> str:
        """The table's line for a system's `medians` (the parts it spent time in)."""
        return f"{system} step (median s): " + " · ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in medians.items()
                                                         if v)

    def timed_task(self) -> type:
        """`DiffusionPreferenceTask`, unchanged, with the time of its loss, frozen parts and reference recorded."""
        import torch

        from lmlab.plugins.mapo.task import DiffusionPreferenceTask

        timing = self

        class TimedTask(DiffusionPreferenceTask):
            def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
                     totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                timing.steps.append({})
                out = timing.timed("loss", super().loss, model, batch, totals)
                timing.steps[-1]["loss_end"] = clock(timing.device)
                return out

            def encode_images(self, pixels: torch.Tensor, *, sample: bool = True) -> torch.Tensor:
                return timing.timed("frozen_encoders", super().encode_images, pixels, sample=sample)

            def encode_text(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
                return timing.timed("frozen_encoders", super().encode_text, batch)

            def denoise(self, unet: torch.nn.Module, *args: Any) -> torch.Tensor:
                part = "reference_forward" if unet is self.reference else None
                return timing.timed(part, super().denoise, unet, *args)

        return TimedTask
