"""Routing health as numbers to log and to report: decisiveness, utilisation, divergence, gradient balance.

``health_scalars`` flattens the ``StepHealth`` tuples the RSR layers returned on their latest call into
TensorBoard scalars (``health/layer<L>/step<t>/<metric>``); ``gradient_scalars`` compares the gate's
gradient norm with the experts' after a backward pass; ``trace_health`` computes the same decisiveness and
divergence numbers from a ``RoutingTrace`` recorded while sampling (``thinkpix analyze routing``), where
the eval-mode gate is deterministic and the agreement is the expected one under Gumbel(0, 1) noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..core.health import StepHealth, expert_divergence, gate_decisiveness

PROJECTIONS = ("q", "k", "v")


def _finite(value: torch.Tensor | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def step_scalars(health: StepHealth) -> dict[str, float]:
    """The finite numbers of one step's health: margin, agreement(s), usage per expert, divergence per projection."""
    values = {"margin": _finite(health.margin), "agreement": _finite(health.agreement),
              "sampled_agreement": _finite(health.sampled_agreement)}
    values.update({f"expert{m}_usage": float(u) for m, u in enumerate(health.usage.tolist())})
    values.update({f"divergence_{p}": _finite(d) for p, d in zip(PROJECTIONS, health.divergence)})
    return {k: v for k, v in values.items() if v is not None}


def health_scalars(processors: dict[int, nn.Module]) -> dict[str, float]:
    """``health/layer<L>/step<t>/<metric>`` for every routed RSR layer (``rsr_layers(transformer)``)."""
    scalars = {}
    for layer, proc in processors.items():
        if not proc.last_health or proc.rsr.config.num_experts == 1:
            continue
        for t, health in enumerate(proc.last_health, 1):
            for name, value in step_scalars(health).items():
                scalars[f"health/layer{layer}/step{t}/{name}"] = value
    return scalars


def _norm(params: Sequence[nn.Parameter]) -> float | None:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else None


def gradient_scalars(processors: dict[int, nn.Module]) -> dict[str, float]:
    """Gradient norms of each layer's gate and experts (before clipping), and their ratio: a gate whose
    gradient is orders of magnitude below the experts' barely moves at a shared learning rate."""
    scalars = {}
    for layer, proc in processors.items():
        if proc.rsr.config.num_experts == 1:
            continue
        gate, experts = _norm(list(proc.rsr.gate.parameters())), _norm(list(proc.rsr.experts.parameters()))
        if gate is None or experts is None:
            continue
        scalars[f"health/layer{layer}/gate_grad_norm"] = gate
        scalars[f"health/layer{layer}/expert_grad_norm"] = experts
        if experts > 0:
            scalars[f"health/layer{layer}/gate_to_expert_grad"] = gate / experts
    return scalars


def trace_health(records: Sequence, bank: nn.Module) -> dict:
    """Per latent step of one layer's trace records: mean top-two logit ``margin`` (from the probabilities:
    ``log p_(1) - log p_(2)``), expected train/eval ``agreement`` under Gumbel(0, 1) noise, and the experts'
    ``divergence`` (q, k, v) on the recorded step inputs (None without states)."""
    probs = torch.cat([r.probs for r in records], 1)  # (T, B, N, M)
    steps, m = probs.shape[0], probs.shape[-1]
    if m < 2:
        return {}
    logits = probs.clamp_min(1e-30).log()  # logits up to a per-token constant: enough for margins and softmax
    margin, agreement, divergence = [], [], []
    for t in range(steps):
        mt, at = gate_decisiveness(logits[t])
        margin.append(round(float(mt), 6))
        agreement.append(round(float(at), 6))
        if records[0].states is not None:
            states = torch.cat([r.states[t] for r in records], 0)
            div = expert_divergence(bank.lora_A, bank.lora_B, bank.scaling, states.to(bank.lora_A.device))
            divergence.append([None if not math.isfinite(v) else round(v, 6) for v in div.tolist()])
    return {"margin": margin, "agreement": agreement, "divergence": divergence or None,
            "gumbel_scale": 1.0, "note": "agreement: expected share of tokens whose training-mode route "
                                         "(Gumbel(0, 1) noise) equals this eval-mode route"}
