"""Behaviour of the host-agnostic core: ExpertBank, LatentStepGate and the recursion."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from thinkpix import ExpertBank, LatentStepGate, RecursiveSparseReasoning, RSRConfig, balance_loss


def make_rsr(m, t, dispatch="sorted", rank=4, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = RSRConfig(num_experts=m, latent_steps=t, rank=rank, alpha=2 * rank, dispatch=dispatch, **kw)
    return RecursiveSparseReasoning(cfg, dim=32)


def run(rsr, host, x, c, y, forced=None):
    return rsr(x, y, host.base_qkv, host.attend_fn(c), host.modulate, forced=forced)


def perturb(rsr, scale=0.3, seed=7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rsr.experts.lora_B.copy_(scale * torch.randn(rsr.experts.lora_B.shape, generator=g))


@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("t", [1, 2, 3])
@pytest.mark.parametrize("dispatch", ["sorted", "dense"])
@pytest.mark.parametrize("train", [True, False])
def test_zero_B_equals_plain_attention(host, tokens, m, t, dispatch, train):
    x, c, y = tokens
    rsr = make_rsr(m, t, dispatch).train(train)
    out = run(rsr, host, x, c, y)
    ref_x, ref_c = host.plain(x, c)
    torch.testing.assert_close(out.vision, ref_x, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.text, ref_c, atol=1e-6, rtol=0)
    assert len(out.steps) == t


def _bank_grads(bank, x, idx, soft, dispatch, selected_only=False):
    bank.zero_grad()
    x = x.clone().requires_grad_(True)
    soft = soft.clone().requires_grad_(True)
    weights = F.one_hot(idx, bank.num_experts).float() + (soft - soft.detach())
    if selected_only:
        weights = weights * F.one_hot(idx, bank.num_experts).float()
    out = bank(x, idx, weights, dispatch)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad, bank.lora_A.grad.clone(), bank.lora_B.grad.clone(), soft.grad


@pytest.mark.parametrize("m", [1, 2, 5])
def test_sorted_and_dense_dispatch_agree_on_outputs_and_gradients(m):
    torch.manual_seed(m)
    bank = ExpertBank(m, 24, 20, rank=4, scaling=0.5)
    with torch.no_grad():
        bank.lora_B.normal_()
    x = torch.randn(3, 10, 24)
    idx = torch.randint(m, (3, 10))
    soft = torch.rand(3, 10, m).softmax(-1)
    s_out, s_x, s_a, s_b, s_gate = _bank_grads(bank, x, idx, soft, "sorted")
    d_out, d_x, d_a, d_b, d_gate = _bank_grads(bank, x, idx, soft, "dense")
    for a, b in [(s_out, d_out), (s_x, d_x), (s_a, d_a), (s_b, d_b)]:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # The sorted path gives the gate only the selected expert's term; the dense path restricted to that
    # term must agree with it, and the full dense path is the exact straight-through estimator.
    _, _, _, _, d_sel = _bank_grads(bank, x, idx, soft, "dense", selected_only=True)
    torch.testing.assert_close(s_gate, d_sel, atol=1e-5, rtol=1e-5)
    if m > 1:
        assert not torch.allclose(s_gate, d_gate, atol=1e-4)
        unused = [e for e in range(m) if not (idx == e).any()]
        for e in unused:  # an idle expert gets exactly no gradient on either path
            assert s_a[e].abs().max() == 0 and d_a[e].abs().max() == 0


def test_all_tokens_on_one_expert_matches_dense():
    torch.manual_seed(0)
    bank = ExpertBank(4, 16, 16, rank=4, scaling=1.0)
    with torch.no_grad():
        bank.lora_B.normal_()
    x, idx = torch.randn(2, 8, 16), torch.full((2, 8), 2)
    w = F.one_hot(idx, 4).float()
    torch.testing.assert_close(bank(x, idx, w, "sorted"), bank(x, idx, w, "dense"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("m", [2, 5])
def test_full_module_sorted_equals_dense_with_the_same_seed(host, tokens, m):
    x, c, y = tokens
    outs = []
    for dispatch in ("sorted", "dense"):
        rsr = make_rsr(m, 3, dispatch).train()
        perturb(rsr)
        outs.append(run(rsr, host, x, c, y))
    torch.testing.assert_close(outs[0].vision, outs[1].vision, atol=1e-5, rtol=1e-5)
    for a, b in zip(outs[0].steps, outs[1].steps):
        assert torch.equal(a.experts, b.experts)


def test_gate_gets_gradient_in_training_and_eval_is_deterministic(host, tokens):
    x, c, y = tokens
    rsr = make_rsr(3, 2).train()
    perturb(rsr)
    out = run(rsr, host, x, c, y)
    (out.vision.square().mean() + out.text.square().mean()).backward()
    assert rsr.gate.proj.weight.grad.abs().sum() > 0
    assert rsr.gate.step_embedder.linear_1.weight.grad.abs().sum() > 0
    rsr.eval()
    with torch.no_grad():
        a, b = run(rsr, host, x, c, y), run(rsr, host, x, c, y)
    assert torch.equal(a.vision, b.vision)
    assert all(torch.equal(s.experts, r.experts) for s, r in zip(a.steps, b.steps))
    assert all(torch.equal(s.experts, s.logits.argmax(-1)) for s in a.steps)


def routes(seed, routing="learned", calls=1):
    torch.manual_seed(123)  # same weights; only the routing seed differs
    cfg = RSRConfig(num_experts=4, latent_steps=2, rank=4, seed=seed, routing=routing)
    gate = LatentStepGate(32, 4, tau=cfg.gumbel_tau, routing=routing, seed=seed).train()
    x = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(5))
    return torch.stack([gate(x).index for _ in range(calls)])


@pytest.mark.parametrize("routing", ["learned", "random"])
def test_same_seed_same_routes_and_different_seed_different_routes(routing):
    torch.manual_seed(999)  # the global RNG must not matter
    a = routes(0, routing, calls=3)
    torch.manual_seed(1)
    b = routes(0, routing, calls=3)
    c = routes(1, routing, calls=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # the generator advances between calls


def test_random_routing_is_roughly_uniform_and_skips_the_gate():
    gate = LatentStepGate(8, 4, routing="random", seed=3).train()
    d = gate(torch.randn(4, 500, 8))
    share = torch.bincount(d.index.flatten(), minlength=4).float() / d.index.numel()
    assert (share - 0.25).abs().max() < 0.03
    assert d.logits is None


def test_one_expert_one_step_equals_peft_lora(host, tokens):
    x, c, y = tokens
    rsr = make_rsr(1, 1, rank=4)
    perturb(rsr)
    out = run(rsr, host, x, c, y)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
    peft_host = get_peft_model(host, lora)
    factors = rsr.experts.expert_weights(0)
    with torch.no_grad():
        for name in ("q", "k", "v"):
            layer = getattr(peft_host.base_model.model, f"to_{name}")
            layer.lora_A["default"].weight.copy_(factors[name][0])
            layer.lora_B["default"].weight.copy_(factors[name][1])
    ref_x, ref_c = peft_host.base_model.model.plain(x, c)
    torch.testing.assert_close(out.vision, ref_x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.text, ref_c, atol=1e-6, rtol=1e-6)


def test_balance_loss_is_minimal_for_uniform_routing():
    m, n = 4, 4000
    idx_uniform = torch.arange(n) % m
    uniform = balance_loss(torch.full((n, m), 1 / m), idx_uniform)
    zeros = torch.zeros(n, dtype=torch.long)
    collapsed = balance_loss(F.one_hot(zeros, m).float() * 0.97 + 0.01, zeros)
    skewed_probs = torch.tensor([0.55, 0.15, 0.15, 0.15]).expand(n, m)
    skewed = balance_loss(skewed_probs, torch.where(torch.arange(n) % 2 == 0, 0, idx_uniform))
    assert uniform.item() == pytest.approx(1.0)
    assert uniform < skewed < collapsed
    assert collapsed.item() == pytest.approx(m * 0.98, rel=1e-3)


def independent_forward(host, rsr, x, c, route, remodulate=True):
    """The paper's equations (Sec. 3.3) written out directly for a forced route (T, B, N)."""
    bank, scale, steps = rsr.experts, rsr.config.scaling, route.shape[0]
    attend = host.attend_fn(c)

    def lora(h, idx):
        out = torch.zeros(3, *h.shape)
        for m in range(bank.num_experts):
            f = bank.expert_weights(m)
            for j, name in enumerate("qkv"):
                a, b = f[name]
                out[j] += (idx == m).unsqueeze(-1) * (h @ a.t() @ b.t()) * scale
        return out

    state = x
    for t in range(steps):
        h = x if t == 0 else (host.modulate(state) if remodulate else state)
        d = lora(h, route[t])
        if t == steps - 1:
            q, k, v = host.base_qkv(x)
            return attend(q + d[0], k + d[1], v + d[2])
        state = attend(d[0], d[1], d[2])[0] + x


@pytest.mark.parametrize("remodulate", [True, False])
def test_forced_route_matches_the_paper_equations(host, tokens, remodulate):
    x, c, y = tokens
    rsr = make_rsr(3, 3, remodulate=remodulate)
    perturb(rsr)
    route = torch.randint(3, (3, 2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = run(rsr, host, x, c, y, forced=route)
        ref_x, ref_c = independent_forward(host, rsr, x, c, route, remodulate)
    torch.testing.assert_close(out.vision, ref_x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.text, ref_c, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(s.experts, route[t]) for t, s in enumerate(out.steps))
    assert out.steps[0].logits is not None  # the gate still scores a forced route (for a CE loss)


def test_activation_checkpointing_gives_the_same_gradients(host, tokens):
    x, c, y = tokens
    grads = []
    for ckpt in (False, True):
        rsr = make_rsr(3, 4).train()
        perturb(rsr)
        rsr.gradient_checkpointing = ckpt
        out = run(rsr, host, x, c, y)
        out.vision.square().mean().backward()
        grads.append([p.grad.clone() for p in rsr.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_tokens_only_gate_ignores_condition(host, tokens):
    x, c, y = tokens
    rsr = make_rsr(3, 2, gate_input="tokens").eval()
    perturb(rsr)
    with torch.no_grad():
        a = run(rsr, host, x, c, y)
        b = run(rsr, host, x, c, 10 * y)
    assert all(torch.equal(s.experts, r.experts) for s, r in zip(a.steps, b.steps))


def test_bf16_autocast_runs(host, tokens):
    x, c, y = tokens
    rsr = make_rsr(2, 2).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(rsr, host, x, c, y)
    out.vision.float().mean().backward()
    assert torch.isfinite(rsr.experts.lora_A.grad).all()


def test_initial_weights_depend_on_the_config_seed_and_layer_only():
    cfg = RSRConfig(num_experts=3, latent_steps=2, rank=4, seed=11)
    torch.manual_seed(1)
    a = RecursiveSparseReasoning(cfg, dim=16, layer_index=2)
    torch.manual_seed(2)
    b = RecursiveSparseReasoning(cfg, dim=16, layer_index=2)
    c = RecursiveSparseReasoning(cfg, dim=16, layer_index=3)
    d = RecursiveSparseReasoning(RSRConfig(num_experts=3, latent_steps=2, rank=4, seed=12), dim=16, layer_index=2)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    assert not torch.equal(a.experts.lora_A, c.experts.lora_A)
    assert not torch.equal(a.experts.lora_A, d.experts.lora_A)
