"""Activation checkpointing reruns a block's forward in backward; the gate's Gumbel noise and random routes
come from its own generator, which torch.utils.checkpoint does not restore. The rerun must take the forward's
routes: gradients, outputs and the generator's stream equal those of training without checkpointing."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from thinkpix import RSRConfig, apply_rsr
from thinkpix.core.gate import REPLAY_CALLS
from thinkpix.models.hosts import rsr_layers
from tiny import dit_inputs, flux_inputs, sd3_inputs, tiny_dit, tiny_flux, tiny_sd3

HOSTS = {"sd3": (tiny_sd3, sd3_inputs, (0, 1)), "dit": (tiny_dit, dit_inputs, (0, 1)),
         "flux": (tiny_flux, flux_inputs, (1, 2))}


def routed_model(tmp_path, host: str, routing: str):
    build, inputs, layers = HOSTS[host]
    model = build(tmp_path / host)
    apply_rsr(model, RSRConfig(num_experts=3, latent_steps=3, rank=4, layers=layers, routing=routing))
    with torch.no_grad():  # non-zero B: the routes change the output and the gradients
        for proc in rsr_layers(model).values():
            proc.rsr.experts.lora_B.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    return model.train(), inputs


def two_steps(model, inputs) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Outputs and RSR gradients of two training forwards/backwards, and each gate's generator state after."""
    outputs, grads = [], []
    for step in range(2):
        model.zero_grad()
        out = model(**inputs(seed=step)).sample
        out.square().mean().backward()
        outputs.append(out.detach())
        grads += [p.grad.clone() for proc in rsr_layers(model).values() for p in proc.rsr.parameters()
                  if p.grad is not None]
    states = [proc.rsr.gate.get_rng_state() for proc in rsr_layers(model).values()]
    return outputs, grads, states


@pytest.mark.parametrize(("host", "routing"), [("sd3", "learned"), ("dit", "learned"),
                                              pytest.param("flux", "learned", marks=pytest.mark.slow),
                                              ("sd3", "random")])
def test_diffusers_gradient_checkpointing_replays_the_forward_routes(tmp_path, host, routing):
    plain = two_steps(*routed_model(tmp_path / "plain", host, routing))
    model, inputs = routed_model(tmp_path / "ckpt", host, routing)
    model.enable_gradient_checkpointing()
    checkpointed = two_steps(model, inputs)
    for a, b in zip(plain[0] + plain[1], checkpointed[0] + checkpointed[1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(plain[2], checkpointed[2], strict=True))
    assert any(g.abs().sum() > 0 for g in checkpointed[1])


def test_reentrant_checkpoint_of_the_whole_model_replays_too(tmp_path):
    """``use_reentrant=True`` runs the forward under no_grad and reruns it in backward: the same routes."""
    plain = two_steps(*routed_model(tmp_path / "plain", "sd3", "learned"))
    model, inputs = routed_model(tmp_path / "ckpt", "sd3", "learned")
    outputs, grads = [], []
    for step in range(2):
        model.zero_grad()
        kw = inputs(seed=step)
        latents = kw.pop("hidden_states").requires_grad_(True)  # reentrant checkpoint needs an input with grad
        out = checkpoint(lambda h, kw=kw: model(hidden_states=h, **kw).sample, latents, use_reentrant=True)
        out.square().mean().backward()
        outputs.append(out.detach())
        grads += [p.grad.clone() for proc in rsr_layers(model).values() for p in proc.rsr.parameters()
                  if p.grad is not None]
    for a, b in zip(plain[0] + plain[1], outputs + grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_too_many_forwards_before_a_checkpointed_backward_is_an_error(tmp_path):
    model, inputs = routed_model(tmp_path, "sd3", "learned")
    model.enable_gradient_checkpointing()
    losses = [model(**inputs(seed=i)).sample.square().mean() for i in range(REPLAY_CALLS + 1)]
    with pytest.raises(RuntimeError, match="routes of its forward are lost"):
        torch.stack(losses).sum().backward()
