"""Randomly initialised Shapes-world transformers, named like facebookresearch/DiT's ``DiT_models``.

Both hosts work in pixel space (no VAE): 3 channels, 32x32 images in [-1, 1].

* ``mmdit-*``: a diffusers ``SD3Transformer2DModel`` (MMDiT) conditioned on the tiny CLIP text
  encoder of :mod:`thinkpix.shapes.text` (per-token states and pooled projection, both 64-d).
* ``dit-*``: a diffusers ``DiTTransformer2DModel`` conditioned on one of :data:`CLASS_NAMES`
  (``<colour>_<shape>``); its label table has one extra row, index ``len(CLASS_NAMES)``, for the
  null class of classifier-free guidance.

Every weight is set by :func:`init_weights` (DiT's ``initialize_weights``, adaLN-Zero), so a model
is fully determined by its preset and ``seed``. The paper loops layer 12 of SD3's 24; here the
analogues are :func:`middle_layer` and :func:`three_layers`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from diffusers import DiTTransformer2DModel, SD3Transformer2DModel
from diffusers.models.embeddings import LabelEmbedding, PatchEmbed, PixArtAlphaTextProjection, TimestepEmbedding
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from torch import nn

from thinkpix.shapes.scene import COLORS, DEFAULT_IMAGE_SIZE, SHAPES

CLASS_NAMES: tuple[str, ...] = tuple(f"{color}_{shape}" for shape in SHAPES for color in COLORS)
"""Every (colour, shape) class, in the order of :func:`thinkpix.shapes.dataset.class_names`; the
class id is the index here (training and held-out pairs alike)."""

TEXT_DIM = 64
"""Hidden size and projection size of :func:`thinkpix.shapes.text.tiny_text_encoder`."""

Host = SD3Transformer2DModel | DiTTransformer2DModel


def _heads(width: int, head_dim: int) -> int:
    if width % head_dim:
        raise ValueError(f"width={width} must be a multiple of head_dim={head_dim}")
    return width // head_dim


def _check_patch(patch_size: int, image_size: int) -> None:
    if patch_size < 1 or image_size % patch_size:
        raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")


def mmdit(
    width: int = 128,
    num_layers: int = 8,
    patch_size: int = 4,
    head_dim: int = 64,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
) -> SD3Transformer2DModel:
    """A pixel-space ``SD3Transformer2DModel`` for the Shapes world's text encoder.

    The positional table covers exactly ``image_size`` (``pos_embed_max_size = image_size // patch_size``),
    so nothing larger is stored in the weights.
    """
    _check_patch(patch_size, image_size)
    config = dict(
        sample_size=image_size,
        patch_size=patch_size,
        in_channels=3,
        out_channels=3,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=_heads(width, head_dim),
        joint_attention_dim=TEXT_DIM,
        caption_projection_dim=width,
        pooled_projection_dim=TEXT_DIM,
        pos_embed_max_size=image_size // patch_size,
    )
    return _build(SD3Transformer2DModel, config, seed)


def dit(
    width: int = 128,
    num_layers: int = 8,
    patch_size: int = 4,
    head_dim: int = 64,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
) -> DiTTransformer2DModel:
    """A pixel-space class-conditional ``DiTTransformer2DModel`` over :data:`CLASS_NAMES`.

    ``out_channels=3`` (epsilon only, no learned variance); ``ada_norm_zero`` blocks, whose label
    tables hold ``len(CLASS_NAMES) + 1`` rows (the last is the null class).
    """
    _check_patch(patch_size, image_size)
    config = dict(
        num_attention_heads=_heads(width, head_dim),
        attention_head_dim=head_dim,
        in_channels=3,
        out_channels=3,
        num_layers=num_layers,
        sample_size=image_size,
        patch_size=patch_size,
        num_embeds_ada_norm=len(CLASS_NAMES),
        norm_type="ada_norm_zero",
    )
    return _build(DiTTransformer2DModel, config, seed)


SHAPES_MODELS: dict[str, Callable[..., Host]] = {
    "mmdit-s": partial(mmdit, width=128, num_layers=8, patch_size=4),
    "mmdit-b": partial(mmdit, width=256, num_layers=8, patch_size=2),
    "dit-s": partial(dit, width=128, num_layers=8, patch_size=4),
    "dit-b": partial(dit, width=256, num_layers=8, patch_size=2),
}
"""Presets: ``-s`` is the shipped size (4.7 M and 2.9 M parameters; trains on 2 CPU cores),
``-b`` a larger one (18.5 M and 10.7 M, 256 tokens per image) for a GPU. Both have 8 blocks, so
:func:`middle_layer` and :func:`three_layers` agree across sizes. Any keyword of :func:`mmdit` /
:func:`dit` overrides the preset."""


def build_model(name: str, seed: int = 0, **overrides) -> Host:
    """``SHAPES_MODELS[name](seed=seed, **overrides)`` with a clear error for an unknown name."""
    if name not in SHAPES_MODELS:
        raise ValueError(f"unknown Shapes model {name!r}; choose one of {', '.join(SHAPES_MODELS)}")
    return SHAPES_MODELS[name](seed=seed, **overrides)


def _build(cls: type[Host], config: dict, seed: int) -> Host:
    """``cls(**config)`` initialised by :func:`init_weights` from ``seed``; torch's global RNG state
    is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return init_weights(cls(**config))


def _zero(module: nn.Module) -> None:
    for p in module.parameters():
        nn.init.zeros_(p)


@torch.no_grad()
def init_weights(model: Host) -> Host:
    """DiT's ``initialize_weights`` (facebookresearch/DiT, models.py), applied to a diffusers host.

    Xavier-uniform linear layers with zero biases; the patch projection Xavier-uniform as a linear
    map; label tables and the timestep / pooled-text MLPs normal(0, 0.02); every adaLN modulation
    and the output projection zero (adaLN-Zero: each block starts as the identity, the model
    predicts 0). Draws from torch's global RNG.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, PatchEmbed):
            nn.init.xavier_uniform_(module.proj.weight.view(module.proj.weight.shape[0], -1))
            nn.init.zeros_(module.proj.bias)
        elif isinstance(module, LabelEmbedding):
            nn.init.normal_(module.embedding_table.weight, std=0.02)
        elif isinstance(module, TimestepEmbedding | PixArtAlphaTextProjection):
            nn.init.normal_(module.linear_1.weight, std=0.02)
            nn.init.normal_(module.linear_2.weight, std=0.02)
        elif isinstance(module, AdaLayerNormZero | AdaLayerNormContinuous):
            _zero(module.linear)
    if isinstance(model, SD3Transformer2DModel):
        _zero(model.proj_out)
    else:
        _zero(model.proj_out_1)
        _zero(model.proj_out_2)
    return model


def num_parameters(model: nn.Module) -> int:
    """Parameters plus persistent buffers: the numbers ``save_pretrained`` writes."""
    return sum(t.numel() for t in model.state_dict().values())


def middle_layer(model: Host) -> int:
    """Index of the middle block, ``num_layers // 2`` (the analogue of the paper's layer 12 of 24)."""
    return len(model.transformer_blocks) // 2


def three_layers(model: Host) -> tuple[int, int, int]:
    """Blocks ``(L // 4, L // 2, 3 L // 4)``: three looped layers spread over the depth (the paper
    loops layers 4, 8, 12 of SD3's 24)."""
    depth = len(model.transformer_blocks)
    if depth < 4:
        raise ValueError(f"three_layers needs a model with at least 4 blocks, this one has {depth}")
    return (depth // 4, depth // 2, 3 * depth // 4)
