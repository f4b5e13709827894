"""The real SD3-medium and DiT-XL/2 architectures (random weights): RSR on layers (4, 8, 12) equals the base at init.

Slow (builds 2B + 675M parameters): ``make test-slow``.
"""

import pytest
import torch
from diffusers import DiTTransformer2DModel, SD3Transformer2DModel

from thinkpix import RSRConfig, apply_rsr, remove_rsr

# Published configs: stabilityai/stable-diffusion-3-medium-diffusers (transformer) and facebook/DiT-XL-2-256.
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
DIT_XL_2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                sample_size=32, patch_size=2, num_embeds_ada_norm=1000)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sd3-medium", "dit-xl-2"])
def test_real_architecture_equals_base_at_init(kind):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if kind == "sd3-medium":
        with torch.device("meta"):
            model = SD3Transformer2DModel(**SD3_MEDIUM)
        model = model.to_empty(device="cpu")
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02, generator=g)
        inputs = dict(hidden_states=torch.randn(1, 16, 32, 32, generator=g),
                      encoder_hidden_states=torch.randn(1, 8, 4096, generator=g),
                      pooled_projections=torch.randn(1, 2048, generator=g), timestep=torch.tensor([500.0]))
    else:
        model = DiTTransformer2DModel(**DIT_XL_2)
        inputs = dict(hidden_states=torch.randn(1, 4, 32, 32, generator=g), timestep=torch.tensor([500]),
                      class_labels=torch.tensor([207]))
    model.eval()
    with torch.no_grad():
        base = model(**inputs).sample
        apply_rsr(model, RSRConfig(num_experts=5, latent_steps=5, rank=128, layers=(4, 8, 12)))
        assert torch.equal(model(**inputs).sample, base)
        remove_rsr(model)
        assert torch.equal(model(**inputs).sample, base)
