"""``ShapesClassPipeline``: class-conditional sampling for the Shapes world's DiT, in pixel space.

It mirrors diffusers' ``DiTPipeline`` without a VAE: ``id2label`` lives in the pipeline config
(``model_index.json``), ``get_label_ids`` maps names such as ``"red_circle"`` to ids, and
classifier-free guidance pairs each label with the null class, index ``num_embeds_ada_norm`` of
DiT's ``LabelEmbedding`` (the row it adds when ``class_dropout_prob > 0``). The transformer
predicts epsilon; any ``KarrasDiffusionSchedulers`` member works, ``DDIMScheduler`` by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    ImagePipelineOutput,
)
from diffusers.schedulers import KarrasDiffusionSchedulers

from thinkpix.shapes.models import CLASS_NAMES, build_model
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


def default_scheduler() -> DDIMScheduler:
    """DDIM over DDPM's linear betas (1e-4 to 0.02, 1000 steps), epsilon prediction, samples clipped
    to [-1, 1]: DiT's and DDPM's training schedule for pixel-space 32x32 images."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
    )


@register_with_diffusers
class ShapesClassPipeline(DiffusionPipeline):
    r"""Class-conditional generation with a ``DiTTransformer2DModel`` directly on pixels.

    Args:
        transformer: pixel-space DiT (``in_channels = 3``, ``ada_norm_zero``) over
            ``num_embeds_ada_norm`` classes.
        scheduler: a diffusers scheduler for epsilon prediction (``DDIMScheduler`` by default), or a
            ``FlowMatchEulerDiscreteScheduler`` for a rectified-flow DiT (velocity prediction).
        id2label: class id -> name (``DiTPipeline``'s ``id2label``; comma-separated names are
            synonyms); saved in ``model_index.json``. Defaults to :data:`~thinkpix.shapes.models.CLASS_NAMES`
            when the transformer has exactly that many classes.
        guidance_interval: the default ``(low, high)`` fractions of the training timesteps at which
            classifier-free guidance applies (:func:`~thinkpix.shapes.sampling.guided_at`), or ``None`` for
            every step; saved in ``model_index.json``.
    """

    model_cpu_offload_seq = "transformer"

    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        scheduler: KarrasDiffusionSchedulers,
        id2label: dict[int, str] | dict[str, str] | None = None,
        guidance_interval: list[float] | tuple[float, float] | None = None,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)
        num_classes = transformer.config.num_embeds_ada_norm
        if id2label is None and num_classes == len(CLASS_NAMES):
            id2label = dict(enumerate(CLASS_NAMES))
        id2label = {str(key): str(value) for key, value in (id2label or {}).items()}
        bad = sorted(key for key in id2label if not key.isdigit() or int(key) >= num_classes)
        if bad:
            raise ValueError(f"id2label has keys {bad} outside the transformer's class ids 0..{num_classes - 1}")
        interval = check_guidance_interval(guidance_interval)
        self.register_to_config(id2label=id2label, guidance_interval=list(interval) if interval else None)
        self.labels = dict(
            sorted((name.strip(), int(key)) for key, value in id2label.items() for name in value.split(","))
        )

    @classmethod
    def from_scratch(cls, model: str = "dit-s", seed: int = 0, scheduler: str = "ddim",
                     **overrides) -> ShapesClassPipeline:
        """A randomly initialised pipeline in eval mode: ``SHAPES_MODELS[model]`` (``overrides`` change its size)
        over :data:`~thinkpix.shapes.models.CLASS_NAMES`.

        ``scheduler``: ``"ddim"`` (:func:`default_scheduler`, DiT's noise prediction) or ``"flow"``
        (rectified flow, SD3's objective; the shipped ``shapes-class`` uses it because on a CPU budget it
        converges far sooner: after 1000 steps the noise-prediction model still drew noise,
        ``docs/results/shapes_bases.md``).
        """
        if scheduler not in ("ddim", "flow"):
            raise ValueError(f"scheduler={scheduler!r} is invalid: allowed values are 'ddim' or 'flow'")
        transformer = build_model(model, seed=seed, **overrides)
        if not isinstance(transformer, DiTTransformer2DModel):
            raise ValueError(f"model {model!r} is not a DiT: use a 'dit-*' model for class-conditional sampling")
        sampler = FlowMatchEulerDiscreteScheduler() if scheduler == "flow" else default_scheduler()
        return cls(transformer.eval(), sampler)

    @property
    def num_classes(self) -> int:
        return self.transformer.config.num_embeds_ada_norm

    def get_label_ids(self, label: str | Sequence[str]) -> list[int]:
        """Class ids of label names (``DiTPipeline.get_label_ids``); unknown names raise ``ValueError``."""
        names = [label] if isinstance(label, str) else list(label)
        unknown = [name for name in names if name not in self.labels]
        if unknown:
            raise ValueError(f"unknown class label(s) {unknown}; known labels: {list(self.labels)}")
        return [self.labels[name] for name in names]

    def _class_ids(self, class_labels: int | str | Sequence[int | str]) -> torch.Tensor:
        labels = [class_labels] if isinstance(class_labels, int | str) else list(class_labels)
        if not labels:
            raise ValueError("class_labels is empty: pass at least one class id or label name")
        ids = [self.get_label_ids(x)[0] if isinstance(x, str) else x for x in labels]
        bad = [x for x in ids if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < self.num_classes]
        if bad:
            raise ValueError(f"class ids {bad} are out of range: the transformer has classes 0..{self.num_classes - 1}")
        return torch.tensor(ids, device=self._execution_device)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str],
        guidance_scale: float = 4.0,
        num_inference_steps: int = 50,
        guidance_interval: tuple[float, float] | None = None,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate one image per class label (``DiTPipeline.__call__``, on pixels).

        Args:
            class_labels: class ids, label names (see ``labels``), or a mix.
            guidance_scale: classifier-free guidance scale against the null class; on when > 1.
            num_inference_steps: scheduler steps.
            guidance_interval: ``(low, high)``: guide only while ``low <= t / num_train_timesteps <= high``;
                defaults to the pipeline's ``config.guidance_interval``; ``(0, 1)`` guides every step.
            generator: draws the initial noise and any sampler noise (one generator, or one per image).
            latents: initial noise of shape ``(B, 3, sample_size, sample_size)`` instead of drawing it.
            output_type: ``"np"`` (N, H, W, 3) or ``"pt"`` (N, 3, H, W) floats in [0, 1], or ``"pil"``.
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
        """
        check_output_type(output_type)
        ids = self._class_ids(class_labels)
        config = self.transformer.config
        shape = (len(ids), config.in_channels, config.sample_size, config.sample_size)
        noise = initial_noise(self, shape, generator, latents)
        if guidance_scale > 1:
            ids = torch.cat([torch.full_like(ids, self.num_classes), ids])
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)

        def predict(model_input: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            labels = conditional_rows(ids, model_input.shape[0])
            out = self.transformer(model_input, timestep=timestep, class_labels=labels, return_dict=False)[0]
            return out[:, : config.in_channels]

        interval = check_guidance_interval(
            self.config.guidance_interval if guidance_interval is None else guidance_interval
        )
        images = to_output(denoise(self, noise, predict, guidance_scale, generator, interval), output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
