"""Tiny random diffusers models and pipelines built from configs (no downloads), saved and re-loaded
through ``save_pretrained`` / ``from_pretrained`` so the real loading path is exercised."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

SD3_CONFIG = dict(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=4, attention_head_dim=8,
                  num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64)
DIT_CONFIG = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=4,
                  sample_size=8, patch_size=2, num_embeds_ada_norm=1000)
# diffusers' own FLUX tests' sizes: 2 double-stream + 2 single-stream blocks (RSRConfig.layers 0..3), head dim 16
# split over the rotary axes (4, 4, 8); in_channels 16 = 4 VAE latent channels packed 2x2
FLUX_CONFIG = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                   num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))


def reload(model, folder: Path):
    model.save_pretrained(folder)
    return type(model).from_pretrained(folder).eval()


def tiny_sd3(folder: Path, seed: int = 0, **overrides) -> SD3Transformer2DModel:
    torch.manual_seed(seed)
    return reload(SD3Transformer2DModel(**{**SD3_CONFIG, **overrides}), folder)


def tiny_dit(folder: Path, seed: int = 0, **overrides) -> DiTTransformer2DModel:
    torch.manual_seed(seed)
    return reload(DiTTransformer2DModel(**{**DIT_CONFIG, **overrides}), folder)


def tiny_flux(folder: Path, seed: int = 0, **overrides) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    return reload(FluxTransformer2DModel(**{**FLUX_CONFIG, **overrides}), folder)


def flux_inputs(batch: int = 2, seed: int = 0, text_len: int = 6, side: int = 4, guidance: bool = False) -> dict:
    """Packed latents of a (2 side) x (2 side) latent with the ids FluxPipeline builds; text ids as T5's (zeros)."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, side * side, FLUX_CONFIG["in_channels"], generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, FLUX_CONFIG["joint_attention_dim"], generator=g),
        pooled_projections=torch.randn(batch, FLUX_CONFIG["pooled_projection_dim"], generator=g),
        timestep=torch.tensor([0.9, 0.1][:batch] + [0.5] * max(0, batch - 2)),
        img_ids=FluxPipeline._prepare_latent_image_ids(batch, side, side, "cpu", torch.float32),
        txt_ids=torch.zeros(text_len, 3),
        **({"guidance": torch.full((batch,), 3.5)} if guidance else {}),
    )


def sd3_inputs(batch: int = 2, seed: int = 0, text_len: int = 6) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 4, 16, 16, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, SD3_CONFIG["joint_attention_dim"], generator=g),
        pooled_projections=torch.randn(batch, SD3_CONFIG["pooled_projection_dim"], generator=g),
        timestep=torch.tensor([900.0, 100.0][:batch] + [500.0] * max(0, batch - 2)),
    )


def dit_inputs(batch: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
        timestep=torch.tensor([900, 100][:batch] + [500] * max(0, batch - 2)),
        class_labels=torch.arange(batch) % 10,
    )


def _clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: every character is a token."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def _clip_encoder(seed: int) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=514, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                            num_hidden_layers=2, projection_dim=32, max_position_embeddings=16,
                            bos_token_id=512, eos_token_id=513, pad_token_id=513)
    return CLIPTextModelWithProjection(config).eval()


def _tiny_vae(**kwargs) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(4,), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=1,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), **kwargs)


def tiny_sd3_pipeline(folder: Path, **overrides) -> StableDiffusion3Pipeline:
    torch.manual_seed(0)
    vae = _tiny_vae(sample_size=16, shift_factor=0.0609, scaling_factor=1.5035)
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**{**SD3_CONFIG, **overrides}), scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=_clip_encoder(1), tokenizer=_clip_tokenizer(folder / "tok1"),
        text_encoder_2=_clip_encoder(2), tokenizer_2=_clip_tokenizer(folder / "tok2"),
        text_encoder_3=None, tokenizer_3=None,
    )
    pipe.save_pretrained(folder / "pipe")
    return StableDiffusion3Pipeline.from_pretrained(folder / "pipe", text_encoder_3=None, tokenizer_3=None)


def tiny_dit_pipeline(folder: Path) -> DiTPipeline:
    torch.manual_seed(0)
    vae = _tiny_vae(sample_size=8)
    pipe = DiTPipeline(transformer=DiTTransformer2DModel(**DIT_CONFIG), vae=vae, scheduler=DDIMScheduler())
    pipe.save_pretrained(folder / "pipe")
    return DiTPipeline.from_pretrained(folder / "pipe")


def _t5_tokenizer(max_length: int = 16) -> PreTrainedTokenizerFast:
    """A character-level tokenizer with T5's special tokens (pad 0, eos 1, unk 2; eos appended)."""
    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


def _t5_encoder(seed: int) -> T5EncoderModel:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=98, d_model=FLUX_CONFIG["joint_attention_dim"], d_kv=8, d_ff=37, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def tiny_flux_pipeline(folder: Path, text_length: int = 16) -> FluxPipeline:
    """FluxPipeline with a tiny CLIP (pooled text) and a tiny T5 (token embeddings), random weights, saved
    and re-loaded; ``text_length`` T5 tokens (FluxPipeline's ``max_sequence_length`` must not exceed it)."""
    torch.manual_seed(0)
    clip = CLIPTextModel(_clip_encoder(1).config).eval()
    pipe = FluxPipeline(
        transformer=FluxTransformer2DModel(**FLUX_CONFIG), scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae(sample_size=16, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=clip, tokenizer=_clip_tokenizer(folder / "tok1"),
        text_encoder_2=_t5_encoder(2), tokenizer_2=_t5_tokenizer(text_length),
    )
    pipe.save_pretrained(folder / "pipe")
    return FluxPipeline.from_pretrained(folder / "pipe")
