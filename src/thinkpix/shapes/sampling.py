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
"""``predict(model_input, timestep) -> model output`` for a batch that is doubled ``[uncond, cond]`` at the
steps that are guided and conditional only at the others (:func:`conditional_rows` picks the inputs)."""
GuidanceInterval = tuple[float, float] | None


def register_with_diffusers(pipeline_class: type[DiffusionPipeline]) -> type[DiffusionPipeline]:
    """Make ``DiffusionPipeline.from_pretrained`` load folders saved by ``pipeline_class``.

    diffusers resolves ``model_index.json``'s ``_class_name`` with ``getattr(diffusers, name)``, so the class is
    added to the ``diffusers`` namespace (``diffusers.ShapesTextToImagePipeline``); a class of that name that
    diffusers itself defines is never replaced.
    """
    import diffusers

    known = diffusers.__dict__.get(pipeline_class.__name__)
    if known is not None and known.__module__.split(".")[0] == "diffusers":
        raise ValueError(f"diffusers already has a {pipeline_class.__name__}: not registering thinkpix's")
    setattr(diffusers, pipeline_class.__name__, pipeline_class)
    return pipeline_class


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


def check_guidance_interval(interval: object, name: str = "guidance_interval") -> GuidanceInterval:
    """``(low, high)`` as floats with ``0 <= low < high <= 1``, or ``None`` (guidance at every step)."""
    if interval is None:
        return None
    try:
        low, high = (float(x) for x in interval)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two numbers (low, high) or None, got {interval!r}") from None
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"{name}={interval!r} is invalid: it needs 0 <= low < high <= 1 (fractions of the "
                         "training timesteps, the noise level sigma for flow matching)")
    return low, high


def guided_at(scheduler: object, timestep: torch.Tensor, interval: GuidanceInterval) -> bool:
    """Whether classifier-free guidance applies at ``timestep``: always without an interval, else while
    ``low <= t / num_train_timesteps <= high``.

    Guidance in a limited interval follows Kynkäänniemi et al. 2024 ("Applying Guidance in a Limited
    Interval Improves Sample and Distribution Quality in Diffusion Models"): at high noise, guidance
    pushes samples away from the unconditional mean and can collapse them. With guidance at every step
    the shipped Shapes text-to-image base drew empty black images for most uncoloured single-object
    prompts (``docs/results/shapes_bases.md``, ``docs/results/guidance_interval.md``).
    """
    if interval is None:
        return True
    fraction = float(timestep) / scheduler.config.num_train_timesteps
    return interval[0] <= fraction <= interval[1]


def conditional_rows(condition: torch.Tensor, batch: int) -> torch.Tensor:
    """The rows of a ``[uncond, cond]``-doubled ``condition`` that a ``batch``-row model input needs: all of
    them at a guided step, the conditional half at an unguided one (or when nothing was doubled)."""
    return condition if condition.shape[0] == batch else condition[-batch:]


def guide(prediction: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance on a batch ordered ``[unconditional, conditional]``:
    ``uncond + s * (cond - uncond)``."""
    uncond, cond = prediction.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def denoise(
    pipe: DiffusionPipeline,
    latents: torch.Tensor,
    predict: Predict,
    guidance_scale: float,
    generator: Generator,
    guidance_interval: GuidanceInterval = None,
) -> torch.Tensor:
    """Run ``pipe.scheduler.timesteps`` (set beforehand with ``set_timesteps``) from ``latents``.

    With ``guidance_scale > 1`` the batch is doubled as ``[uncond, cond]`` and guided by
    :func:`guide`, as in ``StableDiffusion3Pipeline``, at the steps inside ``guidance_interval``
    (:func:`guided_at`); the other steps run the conditional batch alone, at half the cost.
    ``generator`` also reaches ``scheduler.step`` when the scheduler draws noise (DDPM, ancestral
    samplers), so every sampler is deterministic from the generator.
    """
    scheduler = pipe.scheduler
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in pipe.progress_bar(scheduler.timesteps):
        doubled = guidance_scale > 1 and guided_at(scheduler, t, guidance_interval)
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
