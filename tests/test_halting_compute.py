"""Adaptive halting (beyond the paper) and compute accounting."""

import pytest
import torch
from diffusers import DiTTransformer2DModel

import thinkpix
from test_models_hosts import perturb_experts
from test_models_real_architectures import DIT_XL_2
from thinkpix import RSRConfig, apply_rsr, aux_loss, rsr_layers
from thinkpix.analysis import dit_macs, flops
from tiny import dit_inputs, tiny_dit


def routed_dit(tmp_path, **kw):
    model = tiny_dit(tmp_path / "m")
    apply_rsr(model, RSRConfig(**{**dict(num_experts=3, latent_steps=5, rank=4, layers=(1, 2)), **kw}))
    perturb_experts(model, scale=0.3)
    return model


@pytest.mark.parametrize("halting", ["delta", "confidence", "learned"])
def test_halting_that_never_fires_is_bit_identical_to_halting_off(tmp_path, halting):
    inputs = dit_inputs()
    off = routed_dit(tmp_path / "off")
    never = {"delta": 1e-30, "confidence": 2.0, "learned": 2.0}[halting]
    on = routed_dit(tmp_path / "on", halting=halting, halt_threshold=never)
    with torch.no_grad():
        assert torch.equal(off(**inputs).sample, on(**inputs).sample)
    used = rsr_layers(on)[1].last_steps_used
    assert (used == 5).all()


@pytest.mark.parametrize("per", ["token", "sample"])
def test_halting_reduces_counted_flops_and_steps(tmp_path, per):
    inputs = dit_inputs(batch=2)
    off = routed_dit(tmp_path / "off")
    on = routed_dit(tmp_path / "on", halting="confidence", halt_threshold=0.34, halt_per=per)
    with torch.no_grad():
        full, halted = flops(off, **inputs), flops(on, **inputs)
        out_off, out_on = off(**inputs).sample, on(**inputs).sample
    used = rsr_layers(on)[1].last_steps_used
    assert used.float().mean() < 5 and (used >= 2).all()
    if per == "sample":
        assert (used == used[:, :1]).all()
    assert halted.total < full.total and halted.rsr < full.rsr
    assert not torch.equal(out_off, out_on)


def test_delta_halting_stops_when_the_state_stops_moving(tmp_path):
    model = routed_dit(tmp_path, halting="delta", halt_threshold=10.0)  # any change counts as "small"
    with torch.no_grad():
        model(**dit_inputs())
    assert (rsr_layers(model)[1].last_steps_used == 2).all()  # one intermediate step, then the final one


def test_learned_halting_trains_with_a_ponder_cost_and_halts_in_eval(tmp_path):
    model = routed_dit(tmp_path, halting="learned", ponder_weight=0.5)
    model.train()
    torch.manual_seed(0)
    out = model(**dit_inputs()).sample
    proc = rsr_layers(model)[1]
    assert proc.last_ponder_loss is not None and 1.0 <= proc.last_ponder_loss.item() <= 4.0
    (out.square().mean() + aux_loss(model)).backward()
    assert proc.rsr.halt_head.proj.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        proc.rsr.halt_head.proj.bias.fill_(5.0)  # sigmoid(5) > 0.5: halt after the first step
        model(**dit_inputs())
    assert (proc.last_steps_used == 2).all()


def test_flop_counter_matches_the_dit_xl_2_formula():
    with torch.device("meta"):
        model = DiTTransformer2DModel(**DIT_XL_2)
    counted = flops(model).total
    assert dit_macs(model) == pytest.approx(118.6e9, rel=1e-3)
    assert counted == pytest.approx(dit_macs(model), rel=0.01)


def test_flops_grow_with_latent_steps_not_with_experts(tmp_path):
    inputs = dit_inputs()
    counts = {}
    for m, t in [(2, 1), (2, 3), (8, 3)]:
        model = routed_dit(tmp_path / f"{m}{t}", num_experts=m, latent_steps=t)
        model.eval()
        counts[m, t] = thinkpix.flops(model, **inputs).total
    assert counts[2, 3] > counts[2, 1]
    layers, batch, tokens, steps, dim = 2, 2, 16, 3, 16
    gate_logits = layers * batch * tokens * steps * dim * (8 - 2)  # the only work that grows with M
    assert counts[8, 3] - counts[2, 3] == gate_logits


def test_set_halting_switches_criteria_on_a_trained_model_and_the_trace_counts_steps(tmp_path):
    from thinkpix import routing_trace, set_halting

    model = routed_dit(tmp_path)
    model.eval()
    with torch.no_grad(), routing_trace(model) as trace:
        fixed = model(**dit_inputs()).sample
    assert trace.mean_steps_used() == 5
    set_halting(model, "delta", threshold=10.0)  # every state change counts as small: stop after one step
    with torch.no_grad(), routing_trace(model) as trace:
        model(**dit_inputs())
    assert trace.mean_steps_used() == 2
    set_halting(model, "none")
    with torch.no_grad():
        assert torch.equal(model(**dit_inputs()).sample, fixed)
    with pytest.raises(ValueError, match="halting head"):
        set_halting(model, "learned")
    with pytest.raises(ValueError, match="halting"):
        set_halting(model, "sometimes")


def test_train_config_carries_halting_to_the_installed_layers():
    from thinkpix.train import preset

    cfg = preset("shapes", halting="learned", ponder_weight=0.1)
    assert (cfg.halting, cfg.ponder_weight) == ("learned", 0.1)
    with pytest.raises(ValueError, match="halting"):
        preset("shapes", halting="never")
