"""routing_trace and force_routing on real diffusers models, checked against the paper's equations."""

import pytest
import torch
import torch.nn.functional as F

from test_models_hosts import HOSTS, perturb_experts
from thinkpix import RSRConfig, apply_rsr, force_routing, routing_trace, rsr_layers
from tiny import dit_inputs, sd3_inputs, tiny_dit, tiny_sd3


def rms(t, norm):
    """RMS norm over the last dim, written out (diffusers' and torch's RMSNorm both compute this)."""
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight


def head_norm(t, norm, heads):
    """A per-head Q/K norm (SD3.5's ``qk_norm="rms_norm"``) on (B, N, D) projections; none when ``norm`` is None."""
    return t if norm is None else rms(t.unflatten(-1, (heads, -1)), norm).flatten(2)


def hand_attention(q, k, v, heads):
    """softmax(Q K^T / sqrt(d)) V per head, written out (no SDPA)."""
    b, n, d = q.shape
    split = lambda t: t.view(b, t.shape[1], heads, d // heads).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    w = (q @ k.transpose(-1, -2) / (d // heads) ** 0.5).softmax(-1)
    return (w @ v).transpose(1, 2).reshape(b, -1, d)


def expert_updates(proc, h, experts):
    """LoRA updates (3, B, N, D) when every token of sample b uses expert experts[b]."""
    bank, cfg = proc.rsr.experts, proc.rsr.config
    out = torch.zeros(3, *h.shape)
    for b, e in enumerate(experts.tolist()):
        f = bank.expert_weights(e)
        for j, name in enumerate("qkv"):
            a, bb = f[name]
            out[j, b] = h[b] @ a.t() @ bb.t() * cfg.scaling
    return out


def forced_recursion(attn, x, route, modulate, attend, proc):
    """Sec. 3.3 for a forced route: LoRA-only intermediate steps, residual to x~, base only at step T."""
    state, steps = x, route.shape[1]
    for t in range(steps):
        h = x if t == 0 else modulate(state)
        d = expert_updates(proc, h, route[:, t])
        if t == steps - 1:
            return attend(attn.to_q(x) + d[0], attn.to_k(x) + d[1], attn.to_v(x) + d[2])
        state = attend(*d)[0] + x


def paper_equations(block, attn, x, c, cond, route, proc):
    """The paper's equations in an SD3 or DiT block, attention written out."""
    emb = block.norm1.linear(F.silu(cond))
    shift, scale = emb.chunk(emb.shape[1] // x.shape[-1], dim=1)[:2]
    modulate = lambda s: F.layer_norm(s, s.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    text = None if c is None else (head_norm(attn.add_q_proj(c), attn.norm_added_q, attn.heads),
                                   head_norm(attn.add_k_proj(c), attn.norm_added_k, attn.heads), attn.add_v_proj(c))

    def attend(q, k, v):
        n = q.shape[1]
        q, k = head_norm(q, attn.norm_q, attn.heads), head_norm(k, attn.norm_k, attn.heads)
        if text is not None:
            q, k, v = (torch.cat([p, t], 1) for p, t in zip((q, k, v), text))
        out = hand_attention(q, k, v, attn.heads)
        return out[:, :n], out[:, n:]

    a_x, a_c = forced_recursion(attn, x, route, modulate, attend, proc)
    a_x = attn.to_out[0](a_x)
    if c is None:
        return a_x, None
    return a_x, (a_c if attn.context_pre_only else attn.to_add_out(a_c))


@pytest.mark.parametrize("kind", ["sd3", "sd35", "dit"])
@pytest.mark.parametrize("layer", [1, 3])  # SD3.5: block 1 also has the vision-only attn2
def test_forced_route_equals_the_paper_equations(tmp_path, kind, layer):
    build, inputs = HOSTS[kind]
    model, inputs = build(tmp_path / "m"), inputs()
    apply_rsr(model, RSRConfig(num_experts=3, latent_steps=3, rank=4, layers=(layer,)))
    perturb_experts(model, scale=0.3)
    block = model.transformer_blocks[layer]
    attn = block.attn1 if kind == "dit" else block.attn
    seen = {}
    if kind != "dit":
        block.register_forward_pre_hook(lambda m, a, kw: seen.update(cond=kw["temb"]), with_kwargs=True)
    else:
        block.norm1.emb.register_forward_hook(lambda m, i, o: seen.update(cond=o))
    attn.register_forward_hook(lambda m, a, kw, out: seen.update(args=a, kwargs=kw, out=out), with_kwargs=True)
    route = torch.tensor([[2, 0, 1], [1, 1, 2]])  # (batch, T)
    with torch.no_grad(), force_routing(model, route), routing_trace(model) as trace:
        model(**inputs)
        x = seen["kwargs"].get("hidden_states", seen["args"][0] if seen["args"] else None)
        c = seen["kwargs"].get("encoder_hidden_states")
        ref_x, ref_c = paper_equations(block, attn, x, c, seen["cond"], route, rsr_layers(model)[layer])
    out = seen["out"]
    out_x, out_c = out if isinstance(out, tuple) else (out, None)
    torch.testing.assert_close(out_x, ref_x, atol=1e-5, rtol=1e-4)
    if c is not None:
        torch.testing.assert_close(out_c, ref_c, atol=1e-5, rtol=1e-4)
    (record,) = trace.records
    assert torch.equal(record.experts, route.t()[..., None].expand_as(record.experts))


def test_trace_records_layers_calls_timesteps_and_probabilities(tmp_path):
    model = tiny_sd3(tmp_path / "m")
    apply_rsr(model, RSRConfig(num_experts=4, latent_steps=3, rank=4, layers=(0, 2)))
    inputs = sd3_inputs()
    with torch.no_grad(), routing_trace(model) as trace:
        model(**inputs)
        model(**{**inputs, "timestep": torch.tensor([10.0, 20.0])})
    assert trace.layers == [0, 2] and len(trace) == 4
    first, second = trace.for_layer(2)
    assert (first.call, second.call) == (0, 1)
    assert first.timestep.tolist() == [900.0, 100.0] and second.timestep.tolist() == [10.0, 20.0]
    assert first.experts.shape == (3, 2, 64) and first.probs.shape == (3, 2, 64, 4)
    torch.testing.assert_close(first.probs.sum(-1), torch.ones(3, 2, 64))
    assert torch.equal(first.experts, first.probs.argmax(-1))  # eval mode: argmax of the gate
    with torch.no_grad():
        model(**inputs)
    assert len(trace) == 4  # nothing recorded outside the context


def test_force_routing_with_a_sequence_and_bad_routes(tmp_path):
    model = tiny_dit(tmp_path / "m")
    apply_rsr(model, RSRConfig(num_experts=3, latent_steps=2, rank=4, layers=(1,)))
    with torch.no_grad(), force_routing(model, [2, 0]), routing_trace(model) as trace:
        model(**dit_inputs(batch=4))
    experts = trace.records[0].experts
    assert (experts[0] == 2).all() and (experts[1] == 0).all()
    for bad, match in [([0], "one expert per latent step"), ([0, 3], r"0\.\.2"), ([0.5, 1], "integer"),
                       (torch.zeros(2, 3, dtype=torch.long), "one expert per latent step"),
                       (torch.zeros(2, 2), "integer tensor")]:
        with pytest.raises(ValueError, match=match), force_routing(model, bad):
            pass
    bad_batch = torch.zeros(3, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="routes for 3 samples"), torch.no_grad(), force_routing(model, bad_batch):
        model(**dit_inputs(batch=4))


def test_trace_can_record_the_input_of_every_latent_step(tmp_path):
    model = tiny_dit(tmp_path / "m")
    apply_rsr(model, RSRConfig(num_experts=2, latent_steps=3, rank=4, layers=(1,)))
    with torch.no_grad(), routing_trace(model, states=True) as trace:
        model(**dit_inputs())
    (record,) = trace.records
    assert record.states.shape == (3, 2, 16, 16)
    with torch.no_grad(), routing_trace(model) as trace:
        model(**dit_inputs())
    assert trace.records[0].states is None
