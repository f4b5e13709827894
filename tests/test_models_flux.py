"""FLUX.1 as a host: the RSR processors of its double- and single-stream blocks against hand-written equations
(rotary embeddings included), its gate condition, LoRA export through FluxPipeline, FLOPs and FluxPipeline."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel

from test_models_checkpoint import check_lora_export
from test_models_hosts import perturb_experts
from test_models_inspect import forced_recursion, rms
from thinkpix import RSRConfig, apply_rsr, export_lora, flops, force_routing, remove_rsr, routing_trace, rsr_layers
from thinkpix.analysis.compute import default_inputs as thinkpix_inputs
from thinkpix.analysis.compute import rsr_step_macs
from thinkpix.models.hosts import rsr_install
from tiny import FLUX_CONFIG, flux_inputs, tiny_flux, tiny_flux_pipeline


def rope(x, ids, axes, theta=10000.0):
    """Rotate channel pairs (2j, 2j+1) of x (B, S, H, d) by pos * theta^(-2j/d_axis), axis by axis, as complex
    numbers (FLUX's rotary embedding, written from its definition)."""
    angles = []
    for axis, dim in enumerate(axes):
        freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles.append(ids[:, axis, None].double() * freqs)
    angle = torch.cat(angles, -1).float()[None, :, None]  # (1, S, 1, d/2)
    z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).flatten(-2)


def flux_equations(block, attn, seen, route, proc, single):
    """Sec. 3.3 for a forced route in a FLUX block, attention written out (no SDPA, no diffusers rotary)."""
    hs, cond, ids = seen["hidden_states"], seen["temb"], seen["ids"]
    n_text = seen["text_len"]
    x, c = (hs[:, n_text:], hs[:, :n_text]) if single else (hs, seen["encoder_hidden_states"])
    emb = (block.norm if single else block.norm1).linear(F.silu(cond))
    shift, scale = emb.chunk(emb.shape[1] // x.shape[-1], dim=1)[:2]
    modulate = lambda s: F.layer_norm(s, s.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    heads = lambda t: t.unflatten(-1, (attn.heads, -1))
    if single:
        text = (rms(heads(attn.to_q(c)), attn.norm_q), rms(heads(attn.to_k(c)), attn.norm_k), heads(attn.to_v(c)))
    else:
        text = (rms(heads(attn.add_q_proj(c)), attn.norm_added_q), rms(heads(attn.add_k_proj(c)), attn.norm_added_k),
                heads(attn.add_v_proj(c)))

    def attend(q, k, v):
        q, k = rms(heads(q), attn.norm_q), rms(heads(k), attn.norm_k)
        q, k, v = (torch.cat([t, p], 1) for t, p in zip(text, (q, k, heads(v))))  # [text ; image]
        q, k = rope(q, ids, FLUX_CONFIG["axes_dims_rope"]), rope(k, ids, FLUX_CONFIG["axes_dims_rope"])
        w = torch.einsum("bshd,bthd->bhst", q, k) / q.shape[-1] ** 0.5
        out = torch.einsum("bhst,bthd->bshd", w.softmax(-1), v).flatten(2)
        return out[:, n_text:], out[:, :n_text]

    a_x, a_c = forced_recursion(attn, x, route, modulate, attend, proc)
    if single:
        return torch.cat([a_c, a_x], 1), None
    return attn.to_out[0](a_x), attn.to_add_out(a_c)


@pytest.mark.parametrize("layer", [1, 3])  # the last double-stream block, the last single-stream block
def test_forced_route_equals_the_paper_equations_with_rotary_embeddings(tmp_path, layer):
    model = tiny_flux(tmp_path / "m")
    inputs = flux_inputs()
    apply_rsr(model, RSRConfig(num_experts=3, latent_steps=3, rank=4, layers=(layer,)))
    perturb_experts(model, scale=0.3)
    single = layer >= FLUX_CONFIG["num_layers"]
    block = (model.single_transformer_blocks[layer - 2] if single else model.transformer_blocks[layer])
    seen = {"ids": torch.cat([inputs["txt_ids"], inputs["img_ids"]]), "text_len": inputs["txt_ids"].shape[0]}
    block.register_forward_pre_hook(lambda m, a, kw: seen.update(temb=kw["temb"]), with_kwargs=True)
    block.attn.register_forward_hook(lambda m, a, kw, out: seen.update(kw, out=out), with_kwargs=True)
    route = torch.tensor([[2, 0, 1], [1, 1, 2]])
    with torch.no_grad(), force_routing(model, route), routing_trace(model) as trace:
        model(**inputs)
        ref_x, ref_c = flux_equations(block, block.attn, seen, route, rsr_layers(model)[layer], single)
    out = seen["out"]
    torch.testing.assert_close(out[0] if isinstance(out, tuple) else out, ref_x, atol=1e-5, rtol=1e-4)
    if not single:
        torch.testing.assert_close(out[1], ref_c, atol=1e-5, rtol=1e-4)
    (record,) = trace.records
    assert record.experts.shape == (3, 2, 16)  # image tokens only are routed, in single-stream blocks too
    assert torch.equal(record.experts, route.t()[..., None].expand_as(record.experts))


def test_forced_routes_differ_in_both_block_kinds(tmp_path):
    model = tiny_flux(tmp_path / "m")
    apply_rsr(model, RSRConfig(num_experts=3, latent_steps=2, rank=4, layers=(1, 2)))
    perturb_experts(model)
    with torch.no_grad():
        outs = []
        for route in ([0, 0], [2, 1]):
            with force_routing(model, route):
                outs.append(model(**flux_inputs()).sample)
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_gate_is_conditioned_on_temb_with_guidance(tmp_path):
    """The gate's y is the block's temb: timestep + guidance + pooled text (FLUX.1-dev embeds guidance)."""
    model = tiny_flux(tmp_path / "m", guidance_embeds=True)
    apply_rsr(model, RSRConfig(num_experts=4, latent_steps=2, rank=4, layers=(0, 3)))
    temb = {}
    model.transformer_blocks[0].register_forward_pre_hook(lambda m, a, kw: temb.update(y=kw["temb"]),
                                                          with_kwargs=True)
    with torch.no_grad(), routing_trace(model) as trace:
        for guidance in (1.0, 7.0):
            inputs = flux_inputs(guidance=True)
            model(**{**inputs, "guidance": torch.full((2,), guidance)})
            assert torch.equal(rsr_layers(model)[0].capture.cond, temb["y"])
    for layer in (0, 3):
        first, second = trace.for_layer(layer)
        assert (first.probs - second.probs).abs().max() > 1e-4
    # the scheduler's timestep, as for SD3 and DiT (the transformer receives it / 1000)
    torch.testing.assert_close(first.timestep, torch.tensor([900.0, 100.0]))


def test_unsupported_processor_setups_are_named(tmp_path):
    model = tiny_flux(tmp_path / "m")
    with pytest.raises(ValueError, match=r"out of range.*FluxTransformer2DModel has 4 blocks"):
        apply_rsr(model, RSRConfig(rank=4, layers=(4,)))
    apply_rsr(model, RSRConfig(rank=4, layers=(0,)))
    model.fuse_qkv_projections()  # fused after RSR was installed: the processor refuses at the forward pass
    with pytest.raises(NotImplementedError, match="unfuse_qkv_projections"), torch.no_grad():
        model(**flux_inputs())
    remove_rsr(model)
    with pytest.raises(NotImplementedError, match="block 0 has fused Q/K/V projections"):
        apply_rsr(model, RSRConfig(rank=4, layers=(0,)))
    assert rsr_install(model) is None


def test_export_lora_loads_through_flux_pipeline(tmp_path):
    pipe = tiny_flux_pipeline(tmp_path / "pipe")
    plain = FluxTransformer2DModel.from_pretrained(tmp_path / "pipe" / "pipe" / "transformer").eval()
    check_lora_export(pipe, plain, flux_inputs(), tmp_path / "lora", layers=(0, 1))


def test_export_lora_refuses_single_stream_blocks(tmp_path):
    model = tiny_flux(tmp_path / "m")
    apply_rsr(model, RSRConfig(num_experts=1, latent_steps=1, rank=4, layers=(1, 2)))
    with pytest.raises(ValueError, match="cannot write block 2 of FluxTransformer2DModel.*image tokens only"):
        export_lora(model, tmp_path / "lora")


def test_flops_on_cpu_count_attention_as_on_meta(tmp_path):
    """Real CPU tensors run SDPA's CPU flash kernel, which torch's counter has no formula for; thinkpix.flops
    counts it, so a real model counts what its meta twin (SDPA decomposed into bmm's) counts."""
    model = tiny_flux(tmp_path / "m")
    with torch.device("meta"):
        twin = FluxTransformer2DModel(**FLUX_CONFIG)
    twin.eval()
    for steps in (1, 3):
        counts = []
        for m in (model, twin):
            apply_rsr(m, RSRConfig(num_experts=1, latent_steps=steps, rank=4, layers=(1, 3), dispatch="dense"))
            counts.append(flops(m, sample_size=8, text_length=6))
            remove_rsr(m)
        assert counts[0] == counts[1] and counts[0].rsr > 0


# black-forest-labs/FLUX.1-dev transformer config (diffusers' defaults, guidance-distilled)
FLUX_1_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                  axes_dims_rope=(16, 56, 56))


def test_flux_1_dev_architecture_shapes_and_flops_on_meta():
    """FLUX.1-dev at 1024 px (4096 image + 512 text tokens, width 3072) on the meta device: RSR in double- and
    single-stream blocks keeps every shape; the base count equals the block formula ``12 S D^2 + 2 S^2 D`` per
    block (S = N + L: each stream's projections and MLP, joint attention); each extra latent step costs at least
    its LoRA, gate and image-query attention ``N D (6 r + M + 2 S)`` and at most the ideal-step bound
    ``rsr_step_macs`` (base-width work included)."""
    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX_1_DEV)
    model.eval()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.9e9, rel=0.01)
    n, length, dim, blocks = 4096, 512, 3072, 19 + 38
    s = n + length
    base = flops(model)
    embed = n * 64 * dim * 2 + length * 4096 * dim  # x_embedder, proj_out, context_embedder
    assert base.total == pytest.approx(blocks * (12 * s * dim**2 + 2 * s**2 * dim) + embed, rel=0.002)
    config = RSRConfig(num_experts=1, latent_steps=5, rank=128, layers=(4, 8, 12, 30), dispatch="dense")
    apply_rsr(model, config)  # dense: the sorted path's counts need real tensors; at M=1 it is the same work
    with torch.no_grad():
        assert model(**thinkpix_inputs(model)).sample.shape == (1, n, 64)
    routed = flops(model)
    per_step = (routed.total - base.total) / (len(config.layers) * (config.latent_steps - 1))
    assert n * dim * (6 * 128 + 1 + 2 * s) < per_step < rsr_step_macs(n, dim, 128, 1, text_tokens=length)
    assert (routed.total - base.total) / base.total < 0.1  # 16 extra (step, layer)s cost < 10% of FLUX.1-dev


def test_flux_pipeline_runs_unchanged_with_rsr(tmp_path):
    pipe = tiny_flux_pipeline(tmp_path)

    def images():
        return pipe(["a red cat", "two dogs"], num_inference_steps=2, height=16, width=16, max_sequence_length=16,
                    output_type="np", generator=torch.Generator().manual_seed(0)).images

    base = images()
    apply_rsr(pipe.transformer, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(1, 2)))
    with routing_trace(pipe.transformer) as trace:
        assert np.array_equal(images(), base)
    assert len(trace.for_layer(2)) == 2
    perturb_experts(pipe.transformer, scale=1.0)
    assert np.abs(images() - base).max() > 1e-3
    remove_rsr(pipe.transformer)
    assert np.array_equal(images(), base)


def test_model_gradient_checkpointing_passes_temb_positionally_and_keeps_gradients(tmp_path):
    """Under ``enable_gradient_checkpointing`` FLUX calls its blocks positionally; the hooks still find temb and
    the text length, and the RSR gradients are those of the plain forward (eval mode: no Gumbel noise)."""
    model = tiny_flux(tmp_path / "m")
    apply_rsr(model, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(1, 2)))
    perturb_experts(model)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.zero_grad()
        model(**flux_inputs()).sample.square().mean().backward()
        grads.append([proc.rsr.experts.lora_B.grad.clone() for proc in rsr_layers(model).values()])
    for a, b in zip(*grads):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b)
