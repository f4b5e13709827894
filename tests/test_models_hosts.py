"""RSR installed in real diffusers SD3 and DiT transformers (tiny random configs, re-loaded from disk)."""

from functools import partial

import pytest
import torch
from diffusers import UNet2DModel

import thinkpix
from thinkpix import RSRConfig, apply_rsr, aux_loss, remove_rsr, rsr_layers, rsr_parameters
from tiny import dit_inputs, flux_inputs, sd3_inputs, tiny_dit, tiny_flux, tiny_sd3

# SD3.5: RMS-normed Q/K and blocks 0-1 with a second, vision-only attention (attn2, left to the base)
tiny_sd35 = partial(tiny_sd3, qk_norm="rms_norm", dual_attention_layers=(0, 1))
# FLUX: blocks 0-1 double-stream, 2-3 single-stream (RSRConfig.layers count both, in execution order)
HOSTS = {"sd3": (tiny_sd3, sd3_inputs), "sd35": (tiny_sd35, sd3_inputs), "dit": (tiny_dit, dit_inputs),
         "flux": (tiny_flux, flux_inputs)}


@pytest.fixture(params=list(HOSTS))
def host(request, tmp_path):
    build, inputs = HOSTS[request.param]
    return request.param, build(tmp_path / request.param), inputs()


def forward(model, inputs):
    return model(**inputs).sample


def perturb_experts(model, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for proc in rsr_layers(model).values():
            b = proc.rsr.experts.lora_B
            b.copy_(scale * torch.randn(b.shape, generator=g))


@pytest.mark.parametrize(("m", "t"), [(1, 1), (2, 2), (5, 3)])
def test_equal_to_base_at_init_on_several_layers_including_the_last(host, m, t):
    _, model, inputs = host

    def both_modes():  # train mode too: Gumbel noise must not leak into the output at init
        outs = []
        for train in (False, True):
            model.train(train)
            torch.manual_seed(0)  # DiT's label dropout draws from the global RNG in train mode
            with torch.no_grad():
                outs.append(forward(model, inputs))
        return outs

    base = both_modes()
    apply_rsr(model, RSRConfig(num_experts=m, latent_steps=t, rank=4, layers=(0, 2, 3)))
    for out, ref in zip(both_modes(), base):
        assert torch.equal(out, ref)


def test_remove_rsr_restores_the_base_bit_for_bit(host):
    _, model, inputs = host
    with torch.no_grad():
        base = forward(model, inputs)
    apply_rsr(model, RSRConfig(num_experts=3, latent_steps=2, rank=4, layers=(1, 3)))
    perturb_experts(model)
    with torch.no_grad():
        changed = forward(model, inputs)
    assert (changed - base).abs().max() > 1e-3
    remove_rsr(model)
    with torch.no_grad():
        assert torch.equal(forward(model, inputs), base)
    assert all(p.requires_grad for p in model.parameters())
    assert not any("rsr" in name for name, _ in model.named_parameters())


def test_only_rsr_parameters_train(host):
    _, model, _ = host
    apply_rsr(model, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(1, 2)))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in rsr_parameters(model)}
    assert len(rsr_parameters(model)) > 0


def test_one_training_step_reaches_every_selected_expert_and_the_gate(host):
    _, model, inputs = host
    apply_rsr(model, RSRConfig(num_experts=3, latent_steps=2, rank=4, layers=(1, 3)))
    perturb_experts(model)
    model.train()
    with thinkpix.routing_trace(model) as trace:
        loss = forward(model, inputs).square().mean()
    loss.backward()
    for record in trace.records:
        proc = rsr_layers(model)[record.layer]
        used = record.experts.unique().tolist()
        for e in used:
            assert proc.rsr.experts.lora_A.grad[e].abs().sum() > 0
            assert proc.rsr.experts.lora_B.grad[e].abs().sum() > 0
        assert proc.rsr.gate.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_balance_loss_is_reported_and_weighted(host):
    _, model, inputs = host
    apply_rsr(model, RSRConfig(num_experts=5, latent_steps=2, rank=4, layers=(0, 1)))
    model.train()
    forward(model, inputs)
    loss = aux_loss(model)
    assert loss.requires_grad and 0.01 * 2 * 0.99 < loss.item() < 0.01 * 2 * 5
    loss.backward()
    assert rsr_layers(model)[0].rsr.gate.proj.weight.grad.abs().sum() > 0


def test_bf16_autocast_runs_and_matches_base_at_init(host):
    _, model, inputs = host
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        base = forward(model, inputs)
    apply_rsr(model, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(1,)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(forward(model, inputs), base)
    perturb_experts(model)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = forward(model, inputs).float().square().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in rsr_parameters(model) if p.grad is not None)


def test_step_checkpointing_gives_the_same_gradients(host):
    _, model, inputs = host
    apply_rsr(model, RSRConfig(num_experts=2, latent_steps=3, rank=4, layers=(1,)))
    perturb_experts(model)
    model.train()
    grads = []
    for enabled in (False, True):
        thinkpix.set_step_checkpointing(model, enabled)
        for p in rsr_parameters(model):
            p.grad = None
        rsr_layers(model)[1].rsr.gate.manual_seed(3)
        torch.manual_seed(0)  # DiT's label dropout
        forward(model, inputs).square().mean().backward()
        grads.append([p.grad.clone() for p in rsr_parameters(model)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_unsupported_models_and_layers_are_rejected(tmp_path):
    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(TypeError, match="SD3Transformer2DModel, DiTTransformer2DModel"):
        apply_rsr(unet, RSRConfig())
    model = tiny_sd3(tmp_path / "m")
    with pytest.raises(ValueError, match=r"out of range.*0\.\.3"):
        apply_rsr(model, RSRConfig(layers=(2, 12)))
    assert thinkpix.models.hosts.rsr_install(model) is None
    apply_rsr(model, RSRConfig(rank=4, layers=(1,)))
    with pytest.raises(ValueError, match="already installed"):
        apply_rsr(model, RSRConfig(rank=4, layers=(2,)))


def test_sd35_routes_the_joint_attention_and_leaves_attn2_to_the_base(tmp_path):
    model = tiny_sd35(tmp_path / "m")
    block = model.transformer_blocks[0]
    second = block.attn2.processor
    assert type(block.attn.norm_q).__name__ == "RMSNorm" and block.norm1.linear.out_features == 9 * 32
    apply_rsr(model, RSRConfig(rank=4, layers=(0, 3)))
    assert isinstance(block.attn.processor, thinkpix.models.processors.RSRJointAttnProcessor)
    assert block.attn2.processor is second


def test_a_host_spec_names_a_bad_kind_and_a_missing_prompt_encoder():
    from dataclasses import replace

    from thinkpix.models.specs import DIT, SD3

    with pytest.raises(ValueError, match=r"HostSpec.kind='text' is invalid: allowed values are 'caption' or 'class'"):
        replace(DIT, kind="text")
    with pytest.raises(ValueError, match="kind='caption' needs encode_prompts"):
        replace(SD3, encode_prompts=None)


def test_a_processor_replaced_after_apply_rsr_is_an_error_not_a_silent_base(host):
    """A processor set after ``apply_rsr`` (``set_processor``, ``set_attn_processor``) drops RSR from the
    forward; anything that reads the installed layers (parameters, the saved state) says so, and ``remove_rsr``
    still restores the base."""
    from thinkpix.models.specs import host_spec

    _, model, inputs = host
    with torch.no_grad():
        base = forward(model, inputs)
    apply_rsr(model, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(1,)))
    site = host_spec(model).site(model, 1)
    site.attention.set_processor(site.base_processor())
    with pytest.raises(RuntimeError, match="block 1's attention processor was replaced after apply_rsr"):
        rsr_parameters(model)
    with pytest.raises(RuntimeError, match="remove_rsr"):
        thinkpix.models.checkpoint.rsr_state_dict(model)  # what save_rsr writes
    remove_rsr(model)
    with torch.no_grad():
        torch.testing.assert_close(forward(model, inputs), base)
