"""RSR under ``torch.compile(fullgraph=True)`` and the compile-friendly ``grouped`` dispatch (issue 21)."""

import pytest
import torch
import torch.nn.functional as F

from thinkpix import RSRConfig, apply_rsr, aux_loss, rsr_layers, rsr_parameters
from thinkpix.core import dispatch
from thinkpix.core.experts import ExpertBank
from thinkpix.core.gate import LatentStepGate
from tiny import dit_inputs, flux_inputs, sd3_inputs, tiny_dit, tiny_flux, tiny_sd3

# FLUX: layer 0 is a double-stream block, layer 3 a single-stream one
HOSTS = {"sd3": (tiny_sd3, sd3_inputs), "dit": (tiny_dit, dit_inputs), "flux": (tiny_flux, flux_inputs)}


def routed_step(bank: ExpertBank, x, idx, logits, dispatch_name: str, formulation: str | None, monkeypatch):
    """Output and gradients (x, gate logits, A, B) of one bank call with straight-through weights."""
    if formulation is not None:
        monkeypatch.setattr(dispatch, "grouped_formulation", lambda *args: formulation)
    x = x.detach().requires_grad_()
    logits = logits.detach().requires_grad_()
    bank.zero_grad(set_to_none=True)
    soft = logits.softmax(-1)
    weights = F.one_hot(idx, bank.num_experts).to(soft) + soft - soft.detach()
    out = bank(x, idx, weights, dispatch_name)
    (out.float() * torch.linspace(-1, 1, out.shape[-1])).square().sum().backward()
    monkeypatch.undo()
    return [t.float() for t in (out, x.grad, logits.grad, bank.lora_A.grad, bank.lora_B.grad)]


@pytest.mark.parametrize("num_experts", [1, 2, 5])
@pytest.mark.parametrize(("formulation", "dtype"), [("fused", torch.float32), ("segments", torch.float32),
                                                    ("grouped_mm", torch.bfloat16), ("fused", torch.bfloat16)])
def test_grouped_dispatch_equals_sorted_and_dense(num_experts, formulation, dtype, monkeypatch):
    torch.manual_seed(0)
    bank = ExpertBank(num_experts, 16, 32, 8, scaling=0.5).to(dtype)
    torch.nn.init.normal_(bank.lora_B)
    x = torch.randn(2, 40, 16, dtype=dtype)
    idx = torch.randint(num_experts, (2, 40))
    if num_experts > 2:
        idx[idx == 1] = 0  # an idle expert: zero gradients, as sorted gives
    logits = torch.randn(2, 40, num_experts)
    sorted_ = routed_step(bank, x, idx, logits, "sorted", None, monkeypatch)
    grouped = routed_step(bank, x, idx, logits, "grouped", formulation, monkeypatch)
    dense = routed_step(bank, x, idx, logits, "dense", None, monkeypatch)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for name, got, want in zip(("out", "dx", "dlogits", "dA", "dB"), grouped, sorted_):
        torch.testing.assert_close(got, want, **tol, msg=f"{formulation} {name}")
    # dense gives the same function and factor gradients; the gate gets dense's exact straight-through term
    for name, i in (("out", 0), ("dx", 1), ("dA", 3), ("dB", 4)):
        torch.testing.assert_close(grouped[i], dense[i], **tol, msg=f"{formulation} vs dense {name}")
    if num_experts > 2:
        assert grouped[3][1].abs().max() == 0 and grouped[3][0].abs().max() > 0


def test_grouped_formulation_follows_the_shapes():
    assert dispatch.grouped_formulation(torch.zeros(64, 32), 3, 4, 32) == "fused"
    assert dispatch.grouped_formulation(torch.zeros(4096, 1152), 5, 128, 1152) == "segments"  # CPU


@pytest.mark.parametrize("formulation", ["fused", "segments", "grouped_mm"])
def test_each_grouped_formulation_compiles_fullgraph_and_equals_eager(formulation, monkeypatch):
    torch.manual_seed(0)
    dtype = torch.bfloat16 if formulation == "grouped_mm" else torch.float32
    bank = ExpertBank(4, 16, 32, 8, scaling=0.5).to(dtype)
    torch.nn.init.normal_(bank.lora_B)
    x, idx, logits = torch.randn(3, 20, 16, dtype=dtype), torch.randint(4, (3, 20)), torch.randn(3, 20, 4)
    eager = routed_step(bank, x, idx, logits, "sorted", None, monkeypatch)
    torch._dynamo.reset()
    monkeypatch.setattr(dispatch, "grouped_formulation", lambda *args: formulation)
    compiled = torch.compile(bank, fullgraph=True, backend="aot_eager")
    got = routed_step(compiled, x, idx, logits, "sorted", None, monkeypatch)  # sorted runs as grouped here
    for name, a, b in zip(("out", "dx", "dlogits", "dA", "dB"), got, eager):
        torch.testing.assert_close(a, b, atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=1e-5, msg=name)


def test_gate_noise_is_the_generator_stream_and_copies_draw_their_own():
    gate = LatentStepGate(8, 3, seed=7).train()
    x = torch.randn(2, 5, 8)
    first = gate(x).index
    gate.manual_seed(7)
    assert torch.equal(gate(x).index, first)
    # the noise is exactly what exponential_ on a generator seeded like the gate draws (the eager stream)
    gate.manual_seed(7)
    logits = gate.proj(x).float()
    expected = torch.empty_like(logits).exponential_(generator=torch.Generator().manual_seed(7))
    gumbel = -expected.clamp_min(torch.finfo(torch.float32).tiny).log()
    assert torch.equal(gate(x).index, (logits + gumbel).argmax(-1))
    import copy

    twin = copy.deepcopy(gate)
    twin.manual_seed(7)
    gate.manual_seed(7)
    gate(x)  # advancing the original must not move the copy's stream
    assert torch.equal(twin(x).index, first)


def seed_gates(model, seed=3):
    for i, proc in rsr_layers(model).items():
        proc.rsr.gate.manual_seed(seed + i)


def run(model, inputs, train: bool):
    """Output, and in training the gradients of the RSR parameters of ``output.square().mean() + aux``."""
    seed_gates(model)
    torch.manual_seed(0)  # DiT's label dropout in train mode
    params = rsr_parameters(model)
    for p in params:
        p.grad = None
    if not train:
        with torch.no_grad():
            return model(**inputs).sample, []
    out = model(**inputs).sample
    (out.square().mean() + aux_loss(model)).backward()
    return out.detach(), [p.grad.clone() for p in params]


def perturb(model) -> None:
    """Random RSR parameters (non-zero B), so that every expert and gate does real arithmetic."""
    with torch.no_grad():
        for p in rsr_parameters(model):
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))


def assert_one_graph_equal_to_eager(model, data, train: bool) -> list:
    """One graph, no break, under ``torch._dynamo.explain``; the compiled outputs and RSR gradients equal eager's
    within 1e-5. Returns eager's gradients."""
    model.train(train)
    explained = torch._dynamo.explain(model)(**data)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    eager_out, eager_grads = run(model, data, train)
    torch._dynamo.reset()
    out, grads = run(torch.compile(model, fullgraph=True, backend="aot_eager"), data, train)
    torch.testing.assert_close(out, eager_out, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    return eager_grads


@pytest.mark.parametrize("host", ["sd3", "dit", "flux"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_fullgraph_compile_has_no_graph_break_and_equals_eager(host, train, tmp_path, monkeypatch):
    build, inputs = HOSTS[host]
    if host == "dit":  # the tiny DiT takes the opaque segment op, the tiny SD3 the fused matmuls
        monkeypatch.setattr(dispatch, "FUSED_MAX_WORK", 0)
    model = build(tmp_path / host)
    apply_rsr(model, RSRConfig(num_experts=3, latent_steps=3, rank=4, layers=(0, 3), balance_loss_weight=0.1))
    perturb(model)
    grads = assert_one_graph_equal_to_eager(model, inputs(), train)
    if train:  # the routes were sampled (Gumbel noise), and the gate was trained by them
        steps = next(iter(rsr_layers(model).values())).last_steps
        assert steps[0].logits is not None and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(("halting", "train"), [("confidence", False), ("learned", True)], ids=["eval", "train"])
def test_halting_compiles_fullgraph_and_equals_eager(halting, train, tmp_path):
    """Halting at inference (tokens stop early: ``nonzero`` in eager, a masked update under compile) and the
    learned criterion's ACT mixture in training, both traced as one graph, with eager's outputs."""
    model = tiny_sd3(tmp_path / "sd3")
    apply_rsr(model, RSRConfig(num_experts=3, latent_steps=3, rank=4, layers=(1,), halting=halting,
                               halt_threshold=0.83, balance_loss_weight=0.1))
    perturb(model)
    processor = next(iter(rsr_layers(model).values()))
    data = sd3_inputs()
    model.train(train)
    run(model, data, train)
    used = processor.last_steps_used
    if not train:  # some tokens halted, others ran on: both sides of the masked update are exercised
        assert used.min() < 3 and used.max() == 3
    assert_one_graph_equal_to_eager(model, data, train)
    assert torch.equal(processor.last_steps_used, used)  # the compiled run (the latest) halted the same tokens
