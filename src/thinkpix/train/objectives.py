"""Training objectives: SD3's rectified flow and DiT's noise prediction.

* Rectified flow (Esser et al. 2024, Sec. 3; diffusers ``train_dreambooth_lora_sd3.py``): draw
  u ~ logit-normal(m, s), take the scheduler's sigma at index u * N, ``x_t = (1 - sigma) x_0 + sigma eps``,
  regress the velocity ``eps - x_0``.
* Noise prediction (Ho et al. 2020; DiT ``train.py``): t ~ U{0..N-1}, ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``,
  regress eps (the first C output channels when the model also predicts the variance).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling
from torch import Tensor

Forward = Callable[[Tensor, Tensor], Tensor]  # (noisy input, timesteps) -> model output


def flow_matching_loss(forward: Forward, x0: Tensor, scheduler: FlowMatchEulerDiscreteScheduler,
                       generator: torch.Generator, logit_mean: float = 0.0, logit_std: float = 1.0) -> Tensor:
    """Rectified-flow MSE with logit-normal timestep sampling (weighting 1, as SD3's default)."""
    n = scheduler.config.num_train_timesteps
    u = compute_density_for_timestep_sampling("logit_normal", x0.shape[0], logit_mean, logit_std, generator=generator)
    index = (u * n).long().clamp_(0, n - 1)
    sigmas = scheduler.sigmas[index].to(x0)  # training sigmas (with the scheduler's shift)
    timesteps = scheduler.timesteps[index].to(x0)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    sigma = sigmas.view(-1, *([1] * (x0.ndim - 1)))
    noisy = (1.0 - sigma) * x0 + sigma * noise
    pred = forward(noisy, timesteps)
    if pred.shape[1] == 2 * x0.shape[1]:  # a DiT that also predicts the variance: score the first C channels
        pred = pred[:, : x0.shape[1]]
    return F.mse_loss(pred.float(), (noise - x0).float())


def noise_prediction_loss(forward: Forward, x0: Tensor, scheduler: DDPMScheduler, generator: torch.Generator) -> Tensor:
    """DDPM epsilon MSE; a model with 2C output channels (learned sigma) is scored on its first C."""
    n = scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, n, (x0.shape[0],), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    noisy = scheduler.add_noise(x0, noise, timesteps)
    pred = forward(noisy, timesteps)
    if pred.shape[1] == 2 * x0.shape[1]:
        pred = pred[:, : x0.shape[1]]
    return F.mse_loss(pred.float(), noise.float())


def training_scheduler(pipeline_scheduler) -> FlowMatchEulerDiscreteScheduler | DDPMScheduler:
    """The training-time scheduler matching a pipeline's sampler (flow matching, or DDPM for the rest)."""
    if isinstance(pipeline_scheduler, FlowMatchEulerDiscreteScheduler):
        return FlowMatchEulerDiscreteScheduler.from_config(pipeline_scheduler.config)
    return DDPMScheduler.from_config(pipeline_scheduler.config)
