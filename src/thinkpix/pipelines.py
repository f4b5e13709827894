"""The pipeline handle shared by training, sampling, evaluation and analysis: a loaded pipeline, its
transformer, how a batch becomes model inputs, and seeded sampling.

Supported pipelines (read from ``model_index.json``) are those of the hosts' ``HostSpec``s:
``StableDiffusion3Pipeline``, ``FluxPipeline`` and the Shapes text-to-image pipeline (conditioned on
captions, rectified flow), ``DiTPipeline`` and the Shapes class pipeline (conditioned on class ids, noise
prediction). A pipeline with a VAE is trained in its latent space, the Shapes pipelines in pixel space.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import Tensor

from .errors import UserError, check_positive_int
from .models.specs import HOST_SPECS, host_spec

TEXT_PIPELINES = tuple(name for spec in HOST_SPECS if spec.kind == "caption" for name in spec.pipelines)
CLASS_PIPELINES = tuple(name for spec in HOST_SPECS if spec.kind == "class" for name in spec.pipelines)
ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED = {"shapes-t2i": ASSETS / "shapes-t2i", "shapes-class": ASSETS / "shapes-class",
           "shapes-t2i-objects": ASSETS / "shapes-t2i-objects",
           "shapes-t2i-objects-pairs": ASSETS / "shapes-t2i-objects-pairs",
           "shapes-t2i-objects-pairs-12k": ASSETS / "shapes-t2i-objects-pairs-12k"}
"""Bases in the repository. ``shapes-t2i-objects`` has seen single objects and colours only (never a composition),
``shapes-t2i-objects-pairs`` also two objects (never a count, a position or a bound attribute), and
``shapes-t2i-objects-pairs-12k`` is the same recipe trained to the shipped base's 12000 steps: bases for the
decisive reproduction's fine-tuning task (``scripts/pretrain_objects_base.sh``, ``docs/results/finetune_task.md``)."""


def _pipeline_class(name: str):
    if name in ("ShapesTextToImagePipeline", "ShapesClassPipeline"):
        from . import shapes

        return getattr(shapes, name)
    import diffusers

    return getattr(diffusers, name)


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``dtype=`` where diffusers takes it (it deprecates ``torch_dtype``), ``torch_dtype=`` before that."""
    from diffusers.pipelines import pipeline_utils

    return {"dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype": dtype}


def check_sampling_args(steps, guidance_scale) -> None:
    """Sampling settings a pipeline would obey silently: 0 or negative steps (noise, exit 0), a NaN guidance
    scale (guidance off) or an infinite one (saturated images)."""
    check_positive_int(steps, "--num-inference-steps")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(
            guidance_scale):
        raise UserError(f"--guidance-scale={guidance_scale!r} is invalid: allowed values are finite numbers "
                        "(1 or less turns classifier-free guidance off)")


def _from_pretrained(load, source: str, **kwargs):
    """``load(source, use_safetensors=True, **kwargs)``, with an unusable source reported in one line:
    weights load from safetensors only (a pickled ``.bin`` folder is refused), and a hub id must be cached
    when offline."""
    try:
        return load(source, use_safetensors=True, **kwargs)
    except (OSError, SafetensorError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load the pipeline {source} (safetensors weights only): {message}") from None


def load_pipeline(name_or_path: str | Path, torch_dtype: torch.dtype = torch.float32):
    """Load a supported pipeline from a shipped name (``shapes-t2i``, ``shapes-class``), a folder, or a hub id."""
    path = SHIPPED.get(str(name_or_path), Path(name_or_path))
    if str(name_or_path) in SHIPPED and not (path / "model_index.json").is_file():
        raise UserError(f"the shipped base {name_or_path} is missing from {path}: run `make bases` to train it")
    supported = ", ".join(TEXT_PIPELINES + CLASS_PIPELINES)
    index = path / "model_index.json"
    if path.is_dir():
        if not index.is_file():
            config = path / "config.json"
            kind = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
            raise UserError(f"{path} holds {kind or 'no pipeline'}, not a pipeline folder (model_index.json): "
                            f"thinkpix trains {supported}; save the whole pipeline with save_pretrained")
        try:
            spec = json.loads(index.read_text())
        except ValueError as err:
            raise UserError(f"{index} is not valid JSON: {err}") from None
        name = spec.get("_class_name") if isinstance(spec, dict) else None
        if name not in TEXT_PIPELINES + CLASS_PIPELINES:
            raise UserError(f"{path} is a {name}; thinkpix trains {supported}")
        absent = {k: None for k, v in spec.items() if isinstance(v, list) and v == [None, None]}  # saved as None
        return _from_pretrained(_pipeline_class(name).from_pretrained, str(path), **_dtype_kwarg(torch_dtype),
                                **absent)
    if str(name_or_path).count("/") == 1 and not Path(name_or_path).exists():  # a hub id (needs the network)
        from diffusers import DiffusionPipeline

        pipe = _from_pretrained(DiffusionPipeline.from_pretrained, str(name_or_path), **_dtype_kwarg(torch_dtype))
        if type(pipe).__name__ not in TEXT_PIPELINES + CLASS_PIPELINES:
            raise UserError(f"{name_or_path} is a {type(pipe).__name__}; thinkpix trains {supported}")
        return pipe
    raise UserError(f"model {name_or_path} not found: give a pipeline folder, a hub id, or one of {sorted(SHIPPED)}")


@dataclass
class TrainTarget:
    """A loaded pipeline plus the conversions the training loop needs."""

    pipeline: object
    label_map: Tensor | None = None  # class-folder index -> pipeline class id (see map_classes)
    train_text_encoder: bool = False  # set by the loop when the text encoder trains with its base (method "full")

    def __post_init__(self) -> None:
        if hasattr(self.pipeline, "set_progress_bar_config"):
            self.pipeline.set_progress_bar_config(disable=True)  # the training loop has its own progress bar

    @property
    def transformer(self):
        """The pipeline's transformer; behind a ``torch.compile`` wrapper (``pipe.transformer =
        torch.compile(pipe.transformer)``, as diffusers suggests) the module it wraps, whose class and config
        say which host it is. The pipeline still calls the compiled one."""
        transformer = self.pipeline.transformer
        return getattr(transformer, "_orig_mod", transformer)

    @property
    def kind(self) -> str:
        return host_spec(self.transformer).kind

    def denoise(self, module, noisy: Tensor, timestep: Tensor, conditions: dict[str, Tensor]) -> Tensor:
        """``module`` (the transformer, possibly wrapped for DDP) on latents ``noisy`` (B, C, H, W) at scheduler
        timesteps, called the way its host takes inputs (``HostSpec.denoise``: FLUX packs 2x2 patches)."""
        return host_spec(self.transformer).denoise(module, self.transformer.config, noisy, timestep, conditions)

    @property
    def vae(self):
        return getattr(self.pipeline, "vae", None)

    @torch.no_grad()
    def latents(self, pixels: Tensor, generator: torch.Generator) -> Tensor:
        """Images in [-1, 1] to the space the transformer denoises (VAE latents, or the pixels)."""
        vae = self.vae
        if vae is None:
            return pixels
        dist = vae.encode(pixels.to(vae.dtype)).latent_dist
        sample = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((sample - shift) * vae.config.scaling_factor).float()

    def text_conditions(self, captions: list[str]) -> dict[str, Tensor]:
        """Prompt embeddings; differentiable only while the text encoder trains (``train_text_encoder``)."""
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            conditions = host_spec(self.transformer).encode_prompts(self.pipeline, captions)
        return {name: value.float() for name, value in conditions.items()}

    def conditions(self, captions: list[str] | None = None, labels: Tensor | None = None) -> dict[str, Tensor]:
        if self.kind == "caption":
            if captions is None:
                raise ValueError("this model is text-conditioned: the data folder needs captions (metadata.jsonl)")
            return self.text_conditions(captions)
        if labels is None:
            raise ValueError("this model is class-conditioned: the data folder needs class sub-folders")
        return {"class_labels": self.label_map.to(labels.device)[labels] if self.label_map is not None else labels}

    def map_classes(self, class_names: list[str]) -> None:
        """Map a class folder's (sorted) folder names to the pipeline's class ids.

        Folder names the pipeline knows as labels (``get_label_ids``) map to those ids; integer folder
        names are used as ids; anything else is an error (the ids would silently mean other classes).
        """
        known = getattr(self.pipeline, "labels", None) or {}
        if hasattr(self.pipeline, "get_label_ids") and all(name in known for name in class_names):
            ids = self.pipeline.get_label_ids(list(class_names))
        elif all(name.isdigit() for name in class_names):
            ids = [int(name) for name in class_names]
        else:
            unknown = [n for n in class_names if n not in known][:5]
            raise UserError(f"class folders {unknown} are neither labels of this pipeline nor integer class ids")
        out_of_range = [i for i in ids if not 0 <= i < self.num_classes]
        if out_of_range:
            raise UserError(f"class folders name ids {out_of_range[:5]} out of range: this model has classes "
                            f"0..{self.num_classes - 1}")
        self.label_map = torch.tensor(ids)

    @property
    def num_classes(self) -> int:
        return self.transformer.config.num_embeds_ada_norm

    def check_conditions(self, conditions: list) -> list:
        """Prompts (text models), or class ids and label names resolved to ids (class models); a
        ``UserError`` names the first bad one. (A label goes through the pipeline's ``labels``: diffusers'
        ``DiTPipeline.get_label_ids`` would split a single string into characters.)"""
        if not conditions:
            raise UserError("no prompts or class labels given")
        if self.kind == "caption":
            bad = [c for c in conditions if not isinstance(c, str)]
            if bad:
                raise UserError(f"this model is text-conditioned: prompts must be text, got {bad[:3]}")
            return list(conditions)
        labels, ids = getattr(self.pipeline, "labels", None) or {}, []
        for c in conditions:
            if isinstance(c, str) and c not in labels:
                known = f"known labels: {', '.join(list(labels)[:8])}{', ...' if len(labels) > 8 else ''}" if (
                    labels) else "this pipeline has no label names"
                raise UserError(f"unknown class label {c!r} ({known}); or give a class id 0..{self.num_classes - 1}")
            c = labels[c] if isinstance(c, str) else c
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < self.num_classes:
                raise UserError(f"class id {c!r} is out of range: this model has classes 0..{self.num_classes - 1}")
            ids.append(c)
        return ids

    def check_image_size(self, height: int, width: int) -> None:
        """Training images must tile into whole patches of the transformer (after the VAE's downsampling)."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        patch = self.transformer.config.patch_size
        unit = factor * patch
        if height % unit or width % unit:
            raise UserError(f"image size {height}x{width} does not tile into {patch}x{patch} patches"
                            f"{f' of the VAE latents (1/{factor} size)' if factor > 1 else ''}: use an --image-size "
                            f"that is a multiple of {unit}")
        max_patches = getattr(self.transformer.config, "pos_embed_max_size", None)
        if max_patches and max(height, width) // unit > max_patches:
            raise UserError(f"image size {height}x{width} is too large for this transformer: at most "
                            f"{max_patches * unit} pixels a side (pos_embed_max_size={max_patches})")

    @torch.no_grad()
    def sample(self, conditions: list, seed: int | list[int], steps: int = 20, guidance_scale: float = 4.0):
        """Images (N, H, W, 3) float in [0, 1] for prompts, or for class ids / label names, from a seeded generator;
        a list of seeds gives each image its own generator (its noise then does not depend on the batch)."""
        check_sampling_args(steps, guidance_scale)
        if isinstance(seed, list):
            if len(seed) != len(conditions):
                raise ValueError(f"got {len(seed)} seeds for {len(conditions)} conditions: pass one per image")
            generator = [torch.Generator().manual_seed(s) for s in seed]
        else:
            generator = torch.Generator().manual_seed(seed)
        if self.kind == "caption":
            out = self.pipeline(list(conditions), num_inference_steps=steps, guidance_scale=guidance_scale,
                                generator=generator, output_type="np")
        else:
            out = self.pipeline(class_labels=self.check_conditions(conditions), num_inference_steps=steps,
                                guidance_scale=guidance_scale, generator=generator, output_type="np")
        return out.images
