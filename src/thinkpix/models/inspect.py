"""Looking inside and steering the routing: ``routing_trace`` and ``force_routing``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..core.recursion import RSRStep
from .hosts import _require_install


class RoutingRecord(NamedTuple):
    """Routing of one RSR layer in one forward call of the transformer."""

    layer: int  # block index
    call: int  # forward call of this layer since the trace started (e.g. the sampler step)
    timestep: Tensor | None  # (B,) diffusion timestep of each sample, fp32
    experts: Tensor  # (T, B, N) long: chosen expert of every token at every latent step
    probs: Tensor  # (T, B, N, M) fp32: gate probabilities
    states: Tensor | None = None  # (T, B, N, D) fp32 input of every latent step (``routing_trace(states=True)``)
    steps_used: Tensor | None = None  # (B, N) latent steps each token ran when halting is on (final included)


class RoutingTrace:
    """Records written while a ``routing_trace`` context is active (detached, on the CPU)."""

    def __init__(self) -> None:
        self.records: list[RoutingRecord] = []
        self._calls: dict[int, int] = {}

    def record(self, layer: int, timestep: Tensor | float | None, steps: tuple[RSRStep, ...],
               steps_used: Tensor | None = None) -> None:
        experts = torch.stack([s.experts for s in steps]).detach().cpu()
        probs = torch.stack([s.probs for s in steps]).detach().float().cpu()
        if timestep is not None:
            timestep = torch.as_tensor(timestep).detach().float().cpu().reshape(-1).expand(experts.shape[1]).clone()
        states = None
        if steps[0].state is not None:
            states = torch.stack([s.state for s in steps]).float().cpu()
        call = self._calls.get(layer, 0)
        self._calls[layer] = call + 1
        used = None if steps_used is None else steps_used.detach().cpu()
        self.records.append(RoutingRecord(layer, call, timestep, experts, probs, states, used))

    @property
    def layers(self) -> list[int]:
        return sorted(self._calls)

    def for_layer(self, layer: int) -> list[RoutingRecord]:
        return [r for r in self.records if r.layer == layer]

    def __len__(self) -> int:
        return len(self.records)

    def mean_steps_used(self) -> float:
        """Average latent steps per token over every record (T for records without halting)."""
        counts = [r.steps_used.float().mean().item() if r.steps_used is not None else float(r.experts.shape[0])
                  for r in self.records]
        if not counts:
            raise ValueError("the trace is empty: run the transformer inside routing_trace first")
        return sum(counts) / len(counts)


@contextmanager
def routing_trace(transformer: nn.Module, states: bool = False) -> Iterator[RoutingTrace]:
    """Record, per RSR layer and forward call, the timestep and every token's route at every latent step.

    With ``states=True`` the input of every latent step is recorded too (for token trajectories; memory
    grows with T x tokens x width per call).
    """
    install = _require_install(transformer)
    session = install.session
    previous, trace = session.trace, RoutingTrace()
    session.trace = trace
    for proc in install.processors.values():
        proc.rsr.record_states = states
    try:
        yield trace
    finally:
        session.trace = previous
        for proc in install.processors.values():
            proc.rsr.record_states = False


def _as_route(experts: Sequence[int] | Tensor, steps: int, num_experts: int) -> Tensor:
    """Normalise a forced route to (T, B or 1, 1) long."""
    if isinstance(experts, Tensor):
        if experts.dtype.is_floating_point or experts.dtype == torch.bool or experts.ndim != 2:
            raise ValueError(
                f"force_routing expects an integer tensor of shape (batch, T={steps}), got "
                f"{experts.dtype} of shape {tuple(experts.shape)}"
            )
        route = experts.long().t()[..., None]  # (T, B, 1)
    else:
        values = list(experts)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"force_routing expects T={steps} integer expert indices, got {values!r}")
        route = torch.tensor(values, dtype=torch.long).view(-1, 1, 1)
    if route.shape[0] != steps:
        raise ValueError(f"force_routing needs one expert per latent step: T={steps}, got {route.shape[0]}")
    if route.numel() and (route.min() < 0 or route.max() >= num_experts):
        raise ValueError(f"force_routing expert indices must lie in 0..{num_experts - 1}")
    return route


@contextmanager
def force_routing(transformer: nn.Module, experts: Sequence[int] | Tensor) -> Iterator[None]:
    """Override the gate of every RSR layer.

    ``experts`` is a sequence of T expert indices (every token of every sample), or an integer tensor
    of shape (batch, T) (one expert per sample per latent step; a batch that is a multiple of it, as
    with classifier-free guidance, repeats it). The gate still computes its logits, so a
    cross-entropy on them can train it towards the forced route.
    """
    install = _require_install(transformer)
    route = _as_route(experts, install.config.latent_steps, install.config.num_experts)
    previous = install.session.forced
    install.session.forced = route
    try:
        yield
    finally:
        install.session.forced = previous
