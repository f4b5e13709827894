"""``HostSpec``: what thinkpix knows about one supported diffusers transformer, in one place.

Everything host-specific goes through a spec: installing RSR (``hosts.py``), checkpoints and LoRA export
(``checkpoint.py``), FLOP counting (``analysis/compute.py``), FSDP sharding (``train/sharding.py``) and
a pipeline's kind, prompts and model call (``pipelines.py``). Adding a host means one ``HostSpec`` here plus
the processor that replaces its attention.

Block indices (``RSRConfig.layers``) count the blocks in the order the transformer runs them: for FLUX.1
the double-stream blocks ``0..num_layers-1`` first, then the single-stream blocks.

* SD3 / SD3.5 (``SD3Transformer2DModel``): ``transformer_blocks[i].attn`` (joint attention; SD3.5's
  vision-only ``attn2`` stays base), y = the block's ``temb``.
* DiT (``DiTTransformer2DModel``): ``transformer_blocks[i].attn1`` (self-attention), y = ``norm1.emb(t, class)``.
* FLUX.1 (``FluxTransformer2DModel``): ``attn`` of ``transformer_blocks`` then ``single_transformer_blocks``,
  y = the block's ``temb`` (timestep, guidance and pooled text).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DiTTransformer2DModel, FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from torch import Tensor, nn

from .flux import RSRFluxAttnProcessor, RSRFluxSingleAttnProcessor, flux_denoise, flux_inputs, flux_prompts
from .processors import BlockCapture, RSRJointAttnProcessor, RSRSelfAttnProcessor

KINDS = ("caption", "class")  # what conditions a host's pipelines: prompts, or class ids


@dataclass(frozen=True)
class AttentionSite:
    """Where RSR goes in one block."""

    block: nn.Module
    attention: nn.Module
    modulation: nn.Module  # the block's adaLN-Zero: ``linear`` -> (shift, scale, ...), ``norm`` its plain LN
    base_processor: type  # the processor RSR replaces (and reproduces op for op)
    processor: type  # the RSR processor class
    lora_module: str | None  # path of ``attention`` in a diffusers LoRA file (None: no plain LoRA equals it)


def plain_denoise(module: nn.Module, config, noisy: Tensor, timestep: Tensor, conditions: dict) -> Tensor:
    """The model's prediction for ``noisy`` (B, C, H, W) at scheduler timesteps ``timestep``."""
    return module(hidden_states=noisy, timestep=timestep, **conditions).sample


def _sd3_prompts(pipeline, captions: list[str]) -> dict[str, Tensor]:
    # SD3's second and third prompts default to the first; the Shapes pipeline has one text encoder
    named = inspect.signature(pipeline.encode_prompt).parameters
    extra = {name: None for name in ("prompt_2", "prompt_3") if name in named}
    embeds, _, pooled, _ = pipeline.encode_prompt(prompt=captions, do_classifier_free_guidance=False, **extra)
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


@dataclass(frozen=True)
class HostSpec:
    """One supported transformer class and how RSR, FLOP counting, FSDP and training reach into it."""

    model: type
    kind: str  # one of KINDS
    pipelines: tuple[str, ...]  # pipeline classes (by name) that drive this transformer
    blocks: Callable[[nn.Module], list[nn.Module]]  # every block, in execution order: ``layers`` index this
    site: Callable[[nn.Module, int], AttentionSite]  # (transformer, block index) -> where RSR goes
    hook_condition: Callable[[AttentionSite, BlockCapture], list]  # hooks writing ``capture.cond`` (y)
    default_inputs: Callable[..., dict]  # (transformer, batch_size, text_length, sample_size) -> forward kwargs
    fsdp_units: Callable[[nn.Module], list[nn.Module]]  # modules sharded one by one; the rest stays in the root
    text_length: int = 0  # text tokens of the default FLOP-counting inputs
    lora_pipeline: str | None = None  # diffusers pipeline whose ``save_lora_weights`` writes export_lora's file
    denoise: Callable[..., Tensor] = plain_denoise  # (module, config, noisy, timestep, conditions) -> prediction
    encode_prompts: Callable[..., dict] | None = None  # (pipeline, captions) -> conditions (``kind="caption"``)
    # the model's ``timestep`` times this is the scheduler's timestep (0..1000), as routing traces record it
    timestep_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            allowed = " or ".join(map(repr, KINDS))
            raise ValueError(f"HostSpec.kind={self.kind!r} is invalid: allowed values are {allowed}")
        if self.kind == "caption" and self.encode_prompts is None:
            raise ValueError(f"HostSpec of {self.model.__name__}: kind='caption' needs encode_prompts")

    @property
    def name(self) -> str:
        return self.model.__name__


# Hooks are objects, not closures, so that ``copy.deepcopy`` of a transformer copies each with its capture.
@dataclass
class _CaptureBlockInputs:
    """y = the ``temb`` a block receives (as keyword, or positionally under gradient checkpointing); the text
    length too (a single-stream FLUX block attends over ``[text ; image]``)."""

    capture: BlockCapture

    def __call__(self, _module, args, kwargs) -> None:  # block(hidden_states, encoder_hidden_states, temb, ...)
        self.capture.cond = kwargs["temb"] if "temb" in kwargs else args[2]
        context = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
        self.capture.text_tokens = context.shape[1]


@dataclass
class _CaptureEmbedding:
    """DiT: y = the ``CombinedTimestepLabelEmbeddings(timestep, class_labels)`` output."""

    capture: BlockCapture

    def __call__(self, _module, _inputs, out) -> None:
        self.capture.cond = out


def _block_inputs_hook(site: AttentionSite, capture: BlockCapture) -> list:
    return [site.block.register_forward_pre_hook(_CaptureBlockInputs(capture), with_kwargs=True)]


def _label_embedding_hook(site: AttentionSite, capture: BlockCapture) -> list:
    return [site.block.norm1.emb.register_forward_hook(_CaptureEmbedding(capture))]


def _sd3_site(transformer: nn.Module, i: int) -> AttentionSite:
    block = transformer.transformer_blocks[i]
    return AttentionSite(block, block.attn, block.norm1, JointAttnProcessor2_0, RSRJointAttnProcessor,
                         f"transformer_blocks.{i}.attn")


def _dit_site(transformer: nn.Module, i: int) -> AttentionSite:
    block = transformer.transformer_blocks[i]
    if getattr(block, "norm_type", None) != "ada_norm_zero":
        raise NotImplementedError(
            f"DiT blocks with norm_type={getattr(block, 'norm_type', None)!r} are not supported (need 'ada_norm_zero')"
        )
    return AttentionSite(block, block.attn1, block.norm1, AttnProcessor2_0, RSRSelfAttnProcessor, None)


def _flux_blocks(transformer: nn.Module) -> list[nn.Module]:
    return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


def _flux_site(transformer: nn.Module, i: int) -> AttentionSite:
    double = len(transformer.transformer_blocks)
    if i < double:
        block = transformer.transformer_blocks[i]
        return AttentionSite(block, block.attn, block.norm1, FluxAttnProcessor, RSRFluxAttnProcessor,
                             f"transformer_blocks.{i}.attn")
    # a diffusers LoRA on a single-stream to_q/k/v would change the text tokens too: not exportable
    block = transformer.single_transformer_blocks[i - double]
    return AttentionSite(block, block.attn, block.norm, FluxAttnProcessor, RSRFluxSingleAttnProcessor, None)


def _image_inputs(transformer: nn.Module, batch_size: int, sample_size: int | None) -> dict[str, Tensor]:
    cfg = transformer.config
    size = sample_size or cfg.sample_size
    return {"hidden_states": torch.zeros(batch_size, cfg.in_channels, size, size, device=transformer.device,
                                         dtype=transformer.dtype),
            "timestep": torch.full((batch_size,), 500, device=transformer.device)}


def _sd3_inputs(transformer: nn.Module, batch_size: int, text_length: int, sample_size: int | None) -> dict:
    cfg, device, dtype = transformer.config, transformer.device, transformer.dtype
    return {**_image_inputs(transformer, batch_size, sample_size),
            "encoder_hidden_states": torch.zeros(batch_size, text_length, cfg.joint_attention_dim, device=device,
                                                 dtype=dtype),
            "pooled_projections": torch.zeros(batch_size, cfg.pooled_projection_dim, device=device, dtype=dtype)}


def _dit_inputs(transformer: nn.Module, batch_size: int, text_length: int, sample_size: int | None) -> dict:
    return {**_image_inputs(transformer, batch_size, sample_size),
            "class_labels": torch.zeros(batch_size, dtype=torch.long, device=transformer.device)}


SD3 = HostSpec(SD3Transformer2DModel, "caption", ("StableDiffusion3Pipeline", "ShapesTextToImagePipeline"),
               blocks=lambda t: list(t.transformer_blocks), site=_sd3_site, hook_condition=_block_inputs_hook,
               default_inputs=_sd3_inputs, fsdp_units=lambda t: list(t.transformer_blocks), text_length=77,
               lora_pipeline="StableDiffusion3Pipeline", encode_prompts=_sd3_prompts)
# DiT reads block 0's label/timestep embedding after its block loop, outside block 0's forward: a per-block
# FSDP unit for block 0 would have been resharded by then ("mixed torch.Tensor and DTensor"), so it stays
# in the root unit (train/sharding.py).
DIT = HostSpec(DiTTransformer2DModel, "class", ("DiTPipeline", "ShapesClassPipeline"),
               blocks=lambda t: list(t.transformer_blocks), site=_dit_site, hook_condition=_label_embedding_hook,
               default_inputs=_dit_inputs, fsdp_units=lambda t: list(t.transformer_blocks)[1:])
FLUX = HostSpec(FluxTransformer2DModel, "caption", ("FluxPipeline",), blocks=_flux_blocks, site=_flux_site,
                hook_condition=_block_inputs_hook, default_inputs=flux_inputs, fsdp_units=_flux_blocks,
                text_length=512, lora_pipeline="FluxPipeline", denoise=flux_denoise, encode_prompts=flux_prompts,
                timestep_scale=1000.0)  # FluxPipeline passes the scheduler's timestep / 1000

HOST_SPECS = (SD3, DIT, FLUX)


def host_spec(transformer: nn.Module) -> HostSpec:
    """The spec of a supported transformer; a ``TypeError`` naming the supported classes otherwise."""
    for spec in HOST_SPECS:
        if isinstance(transformer, spec.model):
            return spec
    raise TypeError(
        f"RSR supports {', '.join(spec.name for spec in HOST_SPECS)}; got {type(transformer).__name__}. "
        "Pass the pipeline's transformer (e.g. pipe.transformer)."
    )


def pipeline_spec(pipeline_name: str) -> HostSpec | None:
    """The spec of the transformer a pipeline class (by name) drives; None for an unsupported pipeline."""
    return next((spec for spec in HOST_SPECS if pipeline_name in spec.pipelines), None)
