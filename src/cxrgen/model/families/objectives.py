"""Training objectives of the families: DDPM denoising (epsilon or v-prediction, min-SNR weighting) for SD 1.x/2.x
and SDXL, and rectified flow (SD 3.5) with its timestep sampling and loss weighting."""

from __future__ import annotations

from typing import Any

import torch

from .base import Objective


class Denoising(Objective):
    """Uniform timesteps over the DDPM schedule; the target is the noise or the velocity."""

    def __init__(self, scheduler: Any, snr_gamma: float | None) -> None:
        self.scheduler = scheduler
        self.snr_gamma = snr_gamma
        self.steps = scheduler.config.num_train_timesteps

    def timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.steps, (n,), generator=generator)

    def fixed_timestep(self, fraction: float) -> torch.Tensor:
        return torch.tensor([int(fraction * self.steps)])

    def noised(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scheduler
        noisy = s.add_noise(latents, noise, timesteps)
        target = noise if s.config.prediction_type == "epsilon" else s.get_velocity(latents, noise, timesteps)
        return noisy, target

    def weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        if not self.snr_gamma:
            return torch.ones(timesteps.shape, device=timesteps.device)
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.scheduler, timesteps)
        clipped = torch.clamp(snr, max=self.snr_gamma)
        return clipped / (snr + 1 if self.scheduler.config.prediction_type == "v_prediction" else snr)


class RectifiedFlow(Objective):
    """x_t = (1 - sigma) x_0 + sigma noise, the target is noise - x_0 (SD 3's paper). Timesteps index the
    scheduler's shifted schedule; `logit_normal` and `mode` draw them from a density, `cosmap` and `sigma_sqrt` draw
    them uniformly and weight the loss instead (diffusers' `compute_density_for_timestep_sampling` and
    `compute_loss_weighting_for_sd3`)."""

    def __init__(self, scheduler: Any, weighting: str, logit_mean: float = 0.0, logit_std: float = 1.0) -> None:
        self.scheduler = scheduler
        self.weighting = weighting
        self.logit = (logit_mean, logit_std)
        self.steps = scheduler.config.num_train_timesteps
        self.schedule = scheduler.timesteps.clone()  # the training schedule, whatever sampling later sets
        self.sigmas = scheduler.sigmas[: len(self.schedule)].clone()

    def timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling(self.weighting, n, *self.logit, mode_scale=1.29, generator=generator)
        return self.schedule[(u * self.steps).long().clamp(max=self.steps - 1)]

    def fixed_timestep(self, fraction: float) -> torch.Tensor:
        # the schedule runs from pure noise to clean: fraction 0.9 (noisy) is near its start
        return self.schedule[[min(self.steps - 1, int((1 - fraction) * self.steps))]]

    def _sigmas(self, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
        index = (self.schedule.to(timesteps.device)[None, :] == timesteps[:, None]).float().argmax(dim=1)
        sigma = self.sigmas.to(timesteps.device)[index]
        return sigma.reshape(-1, *[1] * (ndim - 1))

    def noised(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self._sigmas(timesteps, latents.ndim).to(latents.dtype)
        return (1 - sigma) * latents + sigma * noise, noise - latents

    def weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        sigma = self._sigmas(timesteps, 1).float()
        return compute_loss_weighting_for_sd3(self.weighting, sigma)
