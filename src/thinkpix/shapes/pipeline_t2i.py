"""``ShapesTextToImagePipeline``: text-to-image sampling for the Shapes world's MMDiT, in pixel space.

It mirrors diffusers' ``StableDiffusion3Pipeline`` with one CLIP text encoder and no VAE:
``encode_prompt`` returns ``(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
negative_pooled_prompt_embeds)``, and ``__call__`` runs the flow-matching Euler loop with
classifier-free guidance by batch concatenation. It saves and loads with ``save_pretrained`` /
``from_pretrained``; an RSR transformer (``thinkpix.apply_rsr(pipe.transformer, ...)``) runs as is.

Training must condition exactly as sampling does: encode captions with :func:`encode_text` (the
empty caption ``""`` is the unconditional input) and use the scheduler's convention
``x_t = (1 - sigma) x_0 + sigma * noise``, ``timestep = 1000 sigma``, target ``noise - x_0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput, SD3Transformer2DModel
from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast

from thinkpix.shapes.models import build_model
from thinkpix.shapes.sampling import (
    Generator,
    check_guidance_interval,
    check_output_type,
    conditional_rows,
    denoise,
    initial_noise,
    register_with_diffusers,
    to_output,
)
from thinkpix.shapes.text import build_tokenizer, tiny_text_encoder, tokenize, validate_prompt

UNCONDITIONAL = ""
"""The unconditional prompt: it tokenizes to ``<bos> <eos>`` and padding."""


def _as_list(prompt: str | Sequence[str], name: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {prompt!r}")
    return prompts


def encode_text(
    tokenizer: PreTrainedTokenizerFast,
    text_encoder: CLIPTextModelWithProjection,
    prompts: str | Sequence[str],
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per-token states (B, MAX_LENGTH, 64), pooled projections (B, 64))`` of ``prompts``.

    Per-token states are the encoder's last hidden state, the pooled vector its ``text_embeds``.
    The empty prompt is the unconditional input; any other prompt is checked by
    :func:`~thinkpix.shapes.text.validate_prompt` (unknown words raise ``ValueError`` naming them
    and the vocabulary).
    """
    prompts = _as_list(prompts, "prompt")
    for prompt in prompts:
        if prompt != UNCONDITIONAL:
            validate_prompt(prompt)
    device = device or text_encoder.device
    ids = tokenize(tokenizer, prompts).input_ids
    out = text_encoder(ids.to(device))
    return out.last_hidden_state, out.text_embeds


@register_with_diffusers
class ShapesTextToImagePipeline(DiffusionPipeline):
    r"""Text-to-image generation with an ``SD3Transformer2DModel`` directly on pixels.

    Args:
        transformer: pixel-space MMDiT (``in_channels = out_channels = 3``) whose
            ``joint_attention_dim`` and ``pooled_projection_dim`` match the text encoder.
        scheduler: a ``FlowMatchEulerDiscreteScheduler``.
        text_encoder: the tiny ``CLIPTextModelWithProjection`` (:func:`~thinkpix.shapes.text.tiny_text_encoder`).
        tokenizer: the word-level tokenizer (:func:`~thinkpix.shapes.text.build_tokenizer`).
        guidance_interval: the default ``(low, high)`` noise levels at which classifier-free guidance applies
            (:func:`~thinkpix.shapes.sampling.guided_at`), or ``None`` for every step; saved in
            ``model_index.json``, so a base ships with the interval it is sampled with.
    """

    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        text_encoder: CLIPTextModelWithProjection,
        tokenizer: PreTrainedTokenizerFast,
        guidance_interval: list[float] | tuple[float, float] | None = None,
    ):
        super().__init__()
        self.register_modules(
            transformer=transformer, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )
        interval = check_guidance_interval(guidance_interval)
        self.register_to_config(guidance_interval=list(interval) if interval else None)

    @classmethod
    def from_scratch(cls, model: str = "mmdit-s", seed: int = 0, **overrides) -> ShapesTextToImagePipeline:
        """A randomly initialised pipeline in eval mode: ``SHAPES_MODELS[model]`` (``overrides`` change its size),
        the tiny text encoder and the default flow-matching scheduler; fully determined by ``seed``."""
        transformer = build_model(model, seed=seed, **overrides)
        if not isinstance(transformer, SD3Transformer2DModel):
            raise ValueError(f"model {model!r} is not an MMDiT: use an 'mmdit-*' model for text-to-image")
        text_encoder = tiny_text_encoder(seed).eval()
        return cls(transformer.eval(), FlowMatchEulerDiscreteScheduler(), text_encoder, build_tokenizer())

    def encode_prompt(
        self,
        prompt: str | list[str],
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """``(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)``,
        each repeated ``num_images_per_prompt`` times per prompt, as ``StableDiffusion3Pipeline.encode_prompt``.

        The negative side defaults to the empty (unconditional) prompt and is ``None`` without
        classifier-free guidance.
        """
        device = device or self._execution_device
        prompts = _as_list(prompt, "prompt")
        embeds, pooled = self._encode(prompts, device, num_images_per_prompt)
        if not do_classifier_free_guidance:
            return embeds, None, pooled, None
        negatives = _as_list(negative_prompt if negative_prompt is not None else UNCONDITIONAL, "negative_prompt")
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}")
        negative_embeds, negative_pooled = self._encode(negatives, device, num_images_per_prompt)
        return embeds, negative_embeds, pooled, negative_pooled

    def _encode(self, prompts: list[str], device: torch.device, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled = encode_text(self.tokenizer, self.text_encoder, prompts, device)
        dtype = self.transformer.dtype
        return embeds.repeat_interleave(copies, dim=0).to(dtype), pooled.repeat_interleave(copies, dim=0).to(dtype)

    def _check_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        config = self.transformer.config
        largest = config.pos_embed_max_size * config.patch_size
        height, width = height or config.sample_size, width or config.sample_size
        for name, value in (("height", height), ("width", width)):
            if value % config.patch_size or not 0 < value <= largest:
                raise ValueError(
                    f"{name}={value} must be a multiple of the patch size {config.patch_size} and at most {largest}"
                )
        return height, width

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        guidance_interval: tuple[float, float] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images for ``prompt`` (``StableDiffusion3Pipeline.__call__``'s loop, on pixels).

        Args:
            prompt: one prompt or a list; words outside the Shapes vocabulary raise ``ValueError``.
            num_inference_steps: Euler steps of the flow-matching scheduler.
            guidance_scale: classifier-free guidance scale; guidance is on when it is > 1.
            guidance_interval: ``(low, high)``: guide only at noise levels ``low <= sigma <= high``; defaults to
                the pipeline's ``config.guidance_interval``; ``(0, 1)`` guides every step.
            negative_prompt: replaces the empty prompt as the unconditional input.
            num_images_per_prompt: images per prompt (copies are adjacent in the output).
            generator: draws the initial noise (one generator, or one per image).
            latents: initial noise of shape ``(B, 3, height, width)`` instead of drawing it.
            height, width: image size in pixels; default the transformer's ``sample_size``.
            output_type: ``"np"`` (N, H, W, 3) or ``"pt"`` (N, 3, H, W) floats in [0, 1], or ``"pil"``.
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
        """
        check_output_type(output_type)
        height, width = self._check_size(height, width)
        guided = guidance_scale > 1
        embeds, negative_embeds, pooled, negative_pooled = self.encode_prompt(
            prompt, self._execution_device, num_images_per_prompt, guided, negative_prompt
        )
        batch = embeds.shape[0]
        if guided:
            embeds, pooled = torch.cat([negative_embeds, embeds]), torch.cat([negative_pooled, pooled])
        noise = initial_noise(self, (batch, self.transformer.config.in_channels, height, width), generator, latents)
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)

        def predict(model_input: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            rows = model_input.shape[0]
            return self.transformer(
                hidden_states=model_input,
                timestep=timestep,
                encoder_hidden_states=conditional_rows(embeds, rows),
                pooled_projections=conditional_rows(pooled, rows),
                return_dict=False,
            )[0]

        interval = check_guidance_interval(
            self.config.guidance_interval if guidance_interval is None else guidance_interval
        )
        images = to_output(denoise(self, noise, predict, guidance_scale, generator, interval), output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
