"""Compute accounting: multiply-adds counted on the real ops, and the analytic floor they are checked against.

``flops`` runs one forward pass under ``torch.utils.flop_counter.FlopCounterMode``, so what it counts
is what ran: the experts each token actually took (sorted dispatch runs one matmul per busy expert),
the tokens that halted early (they skip their experts), the dense path's M-fold work. Matmuls,
convolutions and attention are counted; element-wise ops are not (they are not multiply-adds).

Analytic formulas (``field-facts``): a DiT block costs ``12 N D^2 + 2 N^2 D + 6 D^2`` multiply-adds
(Q/K/V and output projections 4 N D^2, MLP 8 N D^2, attention 2 N^2 D, adaLN 6 D^2), so DiT-XL/2 at
256 px (N=256, D=1152, 28 blocks) is 118.6 G. One extra latent step on one layer adds about
``N D (4 D + 6 r + M + 2 (N + N_text))``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from diffusers import DiTTransformer2DModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..models.hosts import check_supported


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter has formulas for the GPU attention kernels only: SDPA's CPU flash kernel would count as zero
# (the meta device decomposes SDPA into counted bmm's instead), so it is counted with torch's SDPA formula.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


class FlopReport(NamedTuple):
    total: int  # multiply-adds of the whole forward pass
    rsr: int  # of which inside RSR processors (experts, gates, recursive attention)


def default_inputs(transformer: nn.Module, batch_size: int = 1, text_length: int | None = None,
                   sample_size: int | None = None) -> dict[str, torch.Tensor]:
    """Inputs of the configured sample size (zeros; the count does not depend on values, routes aside), as the
    host's ``HostSpec`` builds them; ``text_length`` defaults to the host's (77 for SD3, 512 for FLUX)."""
    spec = check_supported(transformer)
    length = spec.text_length if text_length is None else text_length
    return spec.default_inputs(transformer, batch_size, length, sample_size)


def flops(transformer: nn.Module, batch_size: int = 1, text_length: int | None = None,
          sample_size: int | None = None, **inputs) -> FlopReport:
    """Multiply-adds of one forward pass of ``transformer`` (any supported host, with or without RSR).

    Without ``inputs`` it uses zero inputs at the model's configured (or the given latent) sample size, with
    ``text_length`` text tokens for a text-conditioned host; give real inputs to count the routes and halts
    they produce.
    """
    inputs = inputs or default_inputs(transformer, batch_size, text_length, sample_size)
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=CPU_ATTENTION)
    with torch.no_grad(), counter:
        transformer(**inputs)
    counts = counter.get_flop_counts()
    total = sum(counts.get("Global", {}).values())
    rsr = sum(sum(ops.values()) for name, ops in counts.items() if name.endswith(".processor"))
    return FlopReport(total // 2, rsr // 2)


def dit_block_macs(tokens: int, dim: int) -> int:
    """Analytic multiply-adds of one DiT block: ``12 N D^2 + 2 N^2 D + 6 D^2``."""
    return 12 * tokens * dim**2 + 2 * tokens**2 * dim + 6 * dim**2


def dit_macs(transformer: DiTTransformer2DModel, sample_size: int | None = None) -> int:
    """Analytic multiply-adds of a DiT forward pass (blocks only; embeddings and final layer are < 1%)."""
    cfg = transformer.config
    tokens = ((sample_size or cfg.sample_size) // cfg.patch_size) ** 2
    dim = cfg.num_attention_heads * cfg.attention_head_dim
    return cfg.num_layers * dit_block_macs(tokens, dim)


def rsr_step_macs(tokens: int, dim: int, rank: int, num_experts: int, text_tokens: int = 0) -> int:
    """Ideal extra multiply-adds of one additional latent step on one layer (top-1 expert):
    base-width Q/K/V + output work ``4 D``, LoRA ``6 r``, gate ``M``, attention ``2 (N + N_text)``, per token."""
    return tokens * dim * (4 * dim + 6 * rank + num_experts + 2 * (tokens + text_tokens))
