"""Adaptive halting of the latent recursion: what the paper leaves as future work (Sec. 6, Limitations).

After intermediate step t a token (or a whole sample) may stop: its recursive state is frozen, its
expert is no longer evaluated, and the keys/values it last produced stay in the attention for the
tokens still running. The final step, which adds the frozen base projection, always runs for all.

Criteria (``RSRConfig.halting``), applied in eval mode:

* ``delta``: ``||a~_t - a~_{t-1}|| / ||a~_{t-1}|| < threshold`` (the state stopped moving);
* ``confidence``: the gate's max probability at step t is at least ``threshold``;
* ``learned``: a halting head ``lambda_t = sigmoid(w . a~_t + b)`` reaches ``threshold``. It is trained
  ACT-style (Graves 2016, "Adaptive Computation Time", Sec. 2): in training mode the state fed to the
  final step is the halting-weighted mixture ``sum_t p_t a~_t`` with ``p_t = lambda_t prod_{s<t}(1 - lambda_s)``
  (the last intermediate step takes the remainder), and the ponder cost ``sum_t (t + 1) p_t`` (the expected
  number of intermediate steps, as PonderNet's, Banino et al. 2021) is added to the auxiliary loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class HaltingHead(nn.Module):
    """Per-token halting probability of the learned criterion."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)  # lambda = 0.5 at the start

    def forward(self, state: Tensor) -> Tensor:
        return torch.sigmoid(self.proj(state).squeeze(-1).float())  # (B, N)


def _per_unit(score: Tensor, per: str) -> Tensor:
    """Aggregate a (B, N) per-token score to the halting unit, broadcast back to (B, N)."""
    return score if per == "token" else score.mean(1, keepdim=True).expand_as(score)


def halt_now(criterion: str, threshold: float, per: str, previous: Tensor, state: Tensor, probs: Tensor,
             head: HaltingHead | None) -> Tensor:
    """(B, N) bool: which tokens stop after this intermediate step."""
    if criterion == "delta":
        if per == "sample":
            change = (state - previous).flatten(1).norm(dim=1) / previous.flatten(1).norm(dim=1).clamp_min(1e-12)
            return (change < threshold)[:, None].expand(state.shape[:2])
        change = (state - previous).norm(dim=-1) / previous.norm(dim=-1).clamp_min(1e-12)
        return change < threshold
    if criterion == "confidence":
        return _per_unit(probs.max(-1).values, per) >= threshold
    return _per_unit(head(state), per) >= threshold


class PonderMixture:
    """ACT's halting-weighted state mixture and ponder cost over the intermediate steps (training mode)."""

    def __init__(self, steps: int):
        self.steps, self.t = steps, 0
        self.mixture: Tensor | None = None
        self.remaining: Tensor | None = None
        self.cost: Tensor | None = None

    def add(self, state: Tensor, halting: Tensor) -> None:
        if self.remaining is None:
            self.remaining = torch.ones_like(halting)
            self.mixture = torch.zeros_like(state)
            self.cost = torch.zeros_like(halting)
        last = self.t == self.steps - 1
        p = self.remaining if last else self.remaining * halting  # the last step takes the remainder
        self.mixture = self.mixture + p[..., None].to(state.dtype) * state
        self.cost = self.cost + (self.t + 1) * p
        self.remaining = self.remaining - p
        self.t += 1

    def ponder_cost(self) -> Tensor:
        return self.cost.mean()
