"""RSR in FLUX.1 (``FluxTransformer2DModel``): processors for its double-stream and single-stream blocks.

Both follow diffusers' ``FluxAttnProcessor`` op for op: heads by ``attn.head_dim``, RMS-normed queries
and keys, the sequence ordered ``[text ; image]``, rotary embeddings (``image_rotary_emb``, from
``txt_ids`` and ``img_ids``) applied to the whole concatenated sequence, then ``dispatch_attention_fn``
with the processor's attention backend. So with every LoRA B at zero the block is bit-identical to the base.

* Double-stream blocks (``FluxTransformerBlock``) are MMDiT joint attention, the paper's setting: the image
  branch (``to_q/to_k/to_v``) is routed and recursed, the text branch (``add_*_proj``) is projected once.
* Single-stream blocks (``FluxSingleTransformerBlock``) run one attention over ``[text ; image]`` with shared
  ``to_q/to_k/to_v``. Only the image tokens are routed and recursed (Sec. 3.3 routes vision tokens); the
  text tokens keep their base projection, computed once from the same full-sequence projection the base
  makes (so the base path is reproduced exactly), and attend at every step. Their attention output is
  returned for the whole sequence, as the base processor does (the block has no output projection).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from torch import Tensor

from .processors import RSRAttnProcessor

# The guidance a guidance-distilled FLUX (``guidance_embeds=True``, FLUX.1-dev) is trained and counted at: the
# default of ``FluxPipeline.__call__`` and of diffusers' ``train_dreambooth_lora_flux.py --guidance_scale``.
GUIDANCE = 3.5
DEFAULT_LATENT_SIZE = 128  # ``FluxPipeline.default_sample_size``: 1024 px through the 8x VAE


class _RSRFluxProcessor(RSRAttnProcessor):
    """The part both FLUX processors share: the base processor's attention over ``[text ; image]``."""

    _attention_backend = None  # set by diffusers' ``set_attention_backend`` like on ``FluxAttnProcessor``
    _parallel_config = None

    @staticmethod
    def _check(attn) -> None:
        if getattr(attn, "fused_projections", False):
            raise NotImplementedError("RSR needs separate to_q/to_k/to_v: call transformer.unfuse_qkv_projections()")

    def _attend_fn(self, attn, text: tuple[Tensor, Tensor, Tensor], rope, mask: Tensor | None):
        """``attend(q, k, v)`` for image projections (B, N, D); ``text`` = normed text heads (B, L, H, d)."""
        length = text[0].shape[1]

        def attend(q: Tensor, k: Tensor, v: Tensor):
            q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))
            q, k = attn.norm_q(q), attn.norm_k(k)
            q, k, v = torch.cat([text[0], q], 1), torch.cat([text[1], k], 1), torch.cat([text[2], v], 1)
            if rope is not None:
                q = apply_rotary_emb(q, rope, sequence_dim=1)
                k = apply_rotary_emb(k, rope, sequence_dim=1)
            out = dispatch_attention_fn(q, k, v, attn_mask=mask, backend=self._attention_backend,
                                        parallel_config=self._parallel_config)
            out = out.flatten(2, 3).to(q.dtype)
            return out[:, length:], out[:, :length]

        return attend


class RSRFluxAttnProcessor(_RSRFluxProcessor):
    """RSR in the joint attention of a double-stream ``FluxTransformerBlock``."""

    def forward(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                attention_mask: Tensor | None = None, image_rotary_emb=None, **kwargs):
        self._check(attn)
        if encoder_hidden_states is None:
            raise NotImplementedError("RSRFluxAttnProcessor runs the joint attention of a double-stream block")
        c = encoder_hidden_states  # Algorithm 1, line 8: context Q/K/V once, reused every step
        cq, ck, cv = (p(c).unflatten(-1, (-1, attn.head_dim)) for p in (attn.add_q_proj, attn.add_k_proj,
                                                                          attn.add_v_proj))
        text = (attn.norm_added_q(cq), attn.norm_added_k(ck), cv)
        attend = self._attend_fn(attn, text, image_rotary_emb, attention_mask)
        result = self._run(hidden_states, self._base_qkv(attn), attend)
        hidden = attn.to_out[1](attn.to_out[0](result.vision.contiguous()))
        return hidden, attn.to_add_out(result.text.contiguous())


class RSRFluxSingleAttnProcessor(_RSRFluxProcessor):
    """RSR on the image tokens of a single-stream ``FluxSingleTransformerBlock`` (text tokens not routed)."""

    def forward(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                attention_mask: Tensor | None = None, image_rotary_emb=None, **kwargs):
        self._check(attn)
        length = self.capture.text_tokens  # the block's text length, captured by its pre-hook
        if encoder_hidden_states is not None or length is None:
            raise NotImplementedError("RSRFluxSingleAttnProcessor runs the attention of a single-stream block")
        base = [p(hidden_states) for p in (attn.to_q, attn.to_k, attn.to_v)]  # the base's full-sequence projection
        text = [t[:, :length].unflatten(-1, (-1, attn.head_dim)) for t in base]
        text = (attn.norm_q(text[0]), attn.norm_k(text[1]), text[2])
        image = tuple(t[:, length:] for t in base)
        attend = self._attend_fn(attn, text, image_rotary_emb, attention_mask)
        result = self._run(hidden_states[:, length:], lambda _x: image, attend)
        return torch.cat([result.text, result.vision], 1)


def _guidance(config, batch: int, device, dtype) -> Tensor | None:
    return torch.full((batch,), GUIDANCE, device=device, dtype=dtype) if config.guidance_embeds else None


def flux_inputs(transformer, batch_size: int, text_length: int, sample_size: int | None) -> dict[str, Tensor]:
    """Zero inputs as ``FluxPipeline`` builds them: packed 2x2 latent patches of a ``sample_size`` latent
    (default 128, i.e. 1024 px), ``text_length`` T5 tokens, rotary ids, mid-schedule t = 0.5."""
    from diffusers import FluxPipeline

    cfg, device, dtype = transformer.config, transformer.device, transformer.dtype
    side = (sample_size or DEFAULT_LATENT_SIZE) // 2
    return {"hidden_states": torch.zeros(batch_size, side * side, cfg.in_channels, device=device, dtype=dtype),
            "encoder_hidden_states": torch.zeros(batch_size, text_length, cfg.joint_attention_dim, device=device,
                                                 dtype=dtype),
            "pooled_projections": torch.zeros(batch_size, cfg.pooled_projection_dim, device=device, dtype=dtype),
            "timestep": torch.full((batch_size,), 0.5, device=device, dtype=dtype),
            "img_ids": FluxPipeline._prepare_latent_image_ids(batch_size, side, side, device, dtype),
            "txt_ids": torch.zeros(text_length, 3, device=device, dtype=dtype),
            "guidance": _guidance(cfg, batch_size, device, dtype)}


def flux_denoise(module, config, noisy: Tensor, timestep: Tensor, conditions: dict) -> Tensor:
    """The prediction for latents ``noisy`` (B, C, H, W), as diffusers' FLUX training script calls the model:
    2x2 patches packed into tokens, image ids, ``timestep / 1000``, guidance when distilled, unpacked back."""
    from diffusers import FluxPipeline

    b, c, h, w = noisy.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX packs 2x2 latent patches: the latents are {h}x{w}, so the training images must be a "
                         "multiple of 2 x the VAE's downsampling factor in height and width")
    packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
    ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
    out = module(hidden_states=packed, timestep=timestep / 1000, img_ids=ids,
                 guidance=_guidance(config, b, noisy.device, noisy.dtype), **conditions).sample
    return FluxPipeline._unpack_latents(out, h, w, vae_scale_factor=1)


def flux_prompts(pipeline, captions: list[str]) -> dict[str, Tensor]:
    """``FluxPipeline.encode_prompt``: T5 token embeddings, the pooled CLIP embedding and the text ids."""
    embeds, pooled, text_ids = pipeline.encode_prompt(prompt=captions, prompt_2=None)
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}
