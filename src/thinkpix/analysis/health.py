"""Routing health of a sampling trace (``thinkpix analyze routing``).

``trace_health`` computes the decisiveness and divergence numbers of ``thinkpix.core.health`` from a
``RoutingTrace`` recorded while sampling, where the eval-mode gate is deterministic and the agreement is the
expected one under Gumbel(0, 1) noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..core.health import expert_divergence, gate_decisiveness


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
            div = expert_divergence(bank.lora_A, bank.lora_B, states.to(bank.lora_A.device))
            divergence.append([None if not math.isfinite(v) else round(v, 6) for v in div.tolist()])
    return {"margin": margin, "agreement": agreement, "divergence": divergence or None,
            "gumbel_scale": 1.0, "note": "agreement: expected share of tokens whose training-mode route "
                                         "(Gumbel(0, 1) noise) equals this eval-mode route"}
