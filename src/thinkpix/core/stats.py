"""Routing statistics the paper does not report: utilisation, gate entropy, step-to-step consistency.

They are computed from the per-step routes of one RSR layer (``RSRStep`` tuples, or the tensors of a
``RoutingRecord``) and returned as a NamedTuple (no global state), so the training loop, the
analysis command and tests all read the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

COLLAPSE_SHARE = 0.9  # one expert taking more than this share of the tokens counts as collapse


class RoutingStats(NamedTuple):
    usage: Tensor  # (T, M): share of tokens sent to each expert at each latent step
    entropy: Tensor  # (T,): mean gate entropy in nats (log M = uniform, 0 = certain)
    consistency: Tensor  # (T-1,): share of tokens keeping their expert from step t to t+1

    @property
    def utilisation(self) -> Tensor:
        """(M,): share of all routing decisions taken by each expert."""
        return self.usage.mean(0)

    def collapsed(self, share: float = COLLAPSE_SHARE) -> bool:
        return bool(self.utilisation.max() > share)


def routing_stats(experts: Tensor, probs: Tensor) -> RoutingStats:
    """Statistics of routes ``experts`` (T, ...) with gate probabilities ``probs`` (T, ..., M)."""
    steps, m = experts.shape[0], probs.shape[-1]
    flat = experts.reshape(steps, -1)
    usage = torch.stack([torch.bincount(row, minlength=m).float() / row.numel() for row in flat])
    p = probs.reshape(steps, -1, m).float()
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean(-1)
    consistency = (flat[1:] == flat[:-1]).float().mean(-1) if steps > 1 else flat.new_zeros(0, dtype=torch.float)
    return RoutingStats(usage, entropy, consistency)


def step_stats(steps: Sequence) -> RoutingStats:
    """``routing_stats`` of the ``RSRStep`` tuple an RSR layer returned on its latest call."""
    return routing_stats(torch.stack([s.experts for s in steps]).detach(),
                         torch.stack([s.probs for s in steps]).detach())
