"""Intermediate latent steps skip the text-query rows of joint attention (issue 21): same results, less work."""

import pytest
import torch

from thinkpix import RSRConfig, apply_rsr, aux_loss, rsr_parameters
from thinkpix.core.recursion import RecursiveSparseReasoning
from thinkpix.models import processors
from tiny import sd3_inputs, tiny_sd3


def full_queries(monkeypatch):
    """The behaviour before issue 21: every step computes the text queries too (``vision_only`` ignored)."""
    forward = RecursiveSparseReasoning.forward

    def every_row(self, x, cond, base_qkv, attend, *args, **kwargs):
        return forward(self, x, cond, base_qkv, lambda q, k, v, vision_only=False: attend(q, k, v), *args, **kwargs)

    monkeypatch.setattr(RecursiveSparseReasoning, "forward", every_row)


def outputs_and_grads(model, inputs):
    for p in rsr_parameters(model):
        p.grad = None
    for proc in processors_of(model):
        proc.rsr.gate.manual_seed(11)
    out = model(**inputs).sample
    (out.square().mean() + aux_loss(model)).backward()
    return out.detach(), [p.grad.clone() for p in rsr_parameters(model)]


def processors_of(model):
    from thinkpix import rsr_layers

    return rsr_layers(model).values()


@pytest.fixture
def model(tmp_path):
    model = tiny_sd3(tmp_path / "sd3")
    # layer 3 is the last block (context_pre_only): its text output is not projected
    apply_rsr(model, RSRConfig(num_experts=3, latent_steps=4, rank=4, layers=(1, 3)))
    with torch.no_grad():
        for p in rsr_parameters(model):
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    return model


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_skipping_text_queries_gives_the_old_outputs_and_gradients(model, train, monkeypatch):
    model.train(train)
    inputs = sd3_inputs(text_len=7)
    new_out, new_grads = outputs_and_grads(model, inputs)
    full_queries(monkeypatch)
    old_out, old_grads = outputs_and_grads(model, inputs)
    torch.testing.assert_close(new_out, old_out, atol=1e-6, rtol=1e-6)
    for new, old in zip(new_grads, old_grads):
        torch.testing.assert_close(new, old, atol=1e-6, rtol=1e-6)


def test_intermediate_steps_attend_with_vision_queries_only(model, monkeypatch):
    inputs = sd3_inputs(text_len=7)
    seen, sdpa = [], processors.F.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        seen.append((q.shape[2], k.shape[2]))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(processors.F, "scaled_dot_product_attention", recording)
    with torch.no_grad():
        model.eval()(**inputs)
    n = (16 // 2) ** 2  # vision tokens: 16x16 latent, patch 2
    # base blocks 0 and 2 attend once with every row; RSR blocks 1 and 3 (T=4) run three intermediate steps
    # with the n vision queries against all n + 7 keys, then the final step with every row
    base, rsr = [(n + 7, n + 7)], [(n, n + 7)] * 3 + [(n + 7, n + 7)]
    assert seen == base + rsr + base + rsr
