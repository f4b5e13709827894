"""The sampling steps both Shapes pipelines share: initial noise, the guided denoising loop, outputs.

They follow diffusers' ``StableDiffusion3Pipeline`` (``prepare_latents``, the loop of ``__call__``)
and ``DiTPipeline`` (pixel post-processing), in pixel space: samples live in [-1, 1].
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

OUTPUT_TYPES = ("np", "pil", "pt")

Generator = torch.Generator | list[torch.Generator] | None
Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``predict(model_input, timestep) -> model output`` for a (possibly doubled) batch."""


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is not supported; choose one of {', '.join(OUTPUT_TYPES)}")


def initial_noise(
    pipe: DiffusionPipeline,
    shape: tuple[int, ...],
    generator: Generator,
    latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn from ``generator`` (``randn_tensor``, so a list gives
    one generator per image), or the caller's ``latents``; scaled by the scheduler's
    ``init_noise_sigma`` where it has one."""
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    if isinstance(generator, list) and len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]} images: pass one per image")
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {tuple(shape)}")
    else:
        latents = latents.to(device=device, dtype=dtype)
    return latents * getattr(pipe.scheduler, "init_noise_sigma", 1.0)


def guide(prediction: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance on a batch ordered ``[unconditional, conditional]``:
    ``uncond + s * (cond - uncond)``."""
    uncond, cond = prediction.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def denoise(
    pipe: DiffusionPipeline, latents: torch.Tensor, predict: Predict, guidance_scale: float, generator: Generator
) -> torch.Tensor:
    """Run ``pipe.scheduler.timesteps`` (set beforehand with ``set_timesteps``) from ``latents``.

    With ``guidance_scale > 1`` the batch is doubled as ``[uncond, cond]`` and guided by
    :func:`guide`, as in ``StableDiffusion3Pipeline``. ``generator`` also reaches
    ``scheduler.step`` when the scheduler draws noise (DDPM, ancestral samplers), so every sampler is
    deterministic from the generator.
    """
    scheduler = pipe.scheduler
    doubled = guidance_scale > 1
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in pipe.progress_bar(scheduler.timesteps):
        model_input = torch.cat([latents] * 2) if doubled else latents
        if hasattr(scheduler, "scale_model_input"):
            model_input = scheduler.scale_model_input(model_input, t)
        prediction = predict(model_input, t.expand(model_input.shape[0]))
        if doubled:
            prediction = guide(prediction, guidance_scale)
        latents = scheduler.step(prediction, t, latents, return_dict=False, **step_kwargs)[0]
    return latents


def to_output(samples: torch.Tensor, output_type: str) -> torch.Tensor | np.ndarray | list[Image.Image]:
    """Samples in [-1, 1] as ``"pt"`` (N, 3, H, W) or ``"np"`` (N, H, W, 3) floats in [0, 1], or
    ``"pil"`` images (``DiTPipeline``'s conversion)."""
    check_output_type(output_type)
    samples = (samples / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return samples
    array = samples.cpu().permute(0, 2, 3, 1).float().numpy()
    return DiffusionPipeline.numpy_to_pil(array) if output_type == "pil" else array
