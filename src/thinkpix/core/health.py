"""Routing-health metrics of one latent step: is the gate decisive, are the experts used and different?

Returned as NamedTuples next to the routes (as ST-MoE's router returns its metrics), never kept as state;
``health_scalars`` and ``gradient_scalars`` turn them (and the gate's and experts' gradient norms) into
logged numbers.

Why decisiveness is measured against the Gumbel scale: in training the route is
``argmax(l + s g)`` with ``g ~ Gumbel(0, 1)`` and noise scale ``s`` (1 in the paper). By the Gumbel-max
trick the probability that this noisy route equals the eval-mode route ``argmax l`` is exactly
``softmax(l / s)`` at ``argmax l`` (for M = 2: ``sigmoid(|l_0 - l_1| / s)``). The temperature tau does not
enter: ``argmax((l + s g) / tau) = argmax(l + s g)``; tau only scales the straight-through gradient.
So ``agreement`` is the expected share of tokens whose training-mode route equals their eval-mode route,
``margin / s`` says how many Gumbel scales separate the two best experts (about 2.2 for 90% agreement at
M = 2), and a zero gate reads ``agreement = 1 / M``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DIVERGENCE_TOKENS = 256  # tokens (evenly strided over the batch) on which the experts' deltas are compared
PROJECTIONS = ("q", "k", "v")


class StepHealth(NamedTuple):
    """Health of one latent step of one RSR layer (fp32 scalars unless noted)."""

    margin: Tensor  # mean |l_(1) - l_(2)| between the two largest gate logits
    agreement: Tensor  # expected share of tokens whose noisy (training) route equals the argmax (eval) route
    sampled_agreement: Tensor | None  # measured share in training mode (None in eval mode or without a gate)
    usage: Tensor  # (M,): share of tokens sent to each expert
    divergence: Tensor  # (3,): mean cosine between different experts' Q/K/V deltas on the same tokens (nan: none)


def gate_decisiveness(logits: Tensor, noise_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Mean top-two logit margin and expected train/eval route agreement of ``logits`` (..., M), M >= 2."""
    logits = logits.detach().float().reshape(-1, logits.shape[-1])
    top = logits.topk(2, dim=-1).values
    margin = (top[:, 0] - top[:, 1]).mean()
    if noise_scale == 0:  # no noise: the training route is the argmax route
        return margin, torch.ones((), device=logits.device)
    agreement = (logits / noise_scale).softmax(-1).amax(-1).mean()  # Gumbel-max: P(argmax(l + s g) = argmax l)
    return margin, agreement


def expert_divergence(lora_a: Tensor, lora_b: Tensor, x: Tensor, max_tokens: int = DIVERGENCE_TOKENS) -> Tensor:
    """(3,) mean pairwise cosine between experts' Q/K/V updates ``B_m A_m x`` on the same tokens.

    ``lora_a`` (M, D, 3r) and ``lora_b`` (M, 3, r, D_out) are an ``ExpertBank``'s factors, ``x`` (..., D) the
    step input. 1 means the experts move the tokens the same way (they have not specialised), 0 orthogonal
    updates, -1 opposite ones. Token pairs where an update is exactly zero (B = 0 at initialisation) are left
    out; nan when none is left. The updates are never formed: with ``u_m = A_m x`` (r values per projection),
    ``<B_m u_m, B_n u_n> = u_m^T (B_m B_n^T) u_n``, so the cost is one r x r Gram matrix per expert pair.
    """
    m, rank = lora_a.shape[0], lora_b.shape[2]
    if m < 2:
        return x.new_full((3,), float("nan"), dtype=torch.float32)
    flat = x.detach().reshape(-1, x.shape[-1])
    tokens = flat[:: max(1, flat.shape[0] // max_tokens)][:max_tokens].float()
    a, b = lora_a.detach().float(), lora_b.detach().float()
    u = torch.matmul(tokens, a).view(m, -1, 3, rank).permute(2, 1, 0, 3)  # (3, n, M, r)
    factors = b.permute(1, 0, 2, 3).reshape(3, m * rank, -1)  # (3, M r, D_out)
    gram = torch.matmul(factors, factors.transpose(1, 2)).view(3, m, rank, m, rank)
    inner = torch.einsum("jnar,jarbs,jnbs->jnab", u, gram, u)  # (3, n, M, M): <delta_a, delta_b> per token
    norm = inner.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()  # (3, n, M)
    i, j = torch.triu_indices(m, m, offset=1)
    valid = (norm[..., i] > 0) & (norm[..., j] > 0)  # (3, n, pairs)
    cosine = inner[..., i, j] / (norm[..., i] * norm[..., j]).clamp_min(torch.finfo(torch.float32).tiny)
    count = valid.sum((1, 2))
    total = torch.where(valid, cosine, torch.zeros_like(cosine)).sum((1, 2))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def step_health(index: Tensor, logits: Tensor | None, num_experts: int, noise_scale: float, training: bool,
                divergence: Tensor) -> StepHealth:
    """Health of one step from its routes ``index`` (B, N) and gate ``logits`` (B, N, M) or None."""
    index = index.detach()
    usage = F.one_hot(index.reshape(-1), num_experts).float().mean(0)
    if logits is None or num_experts < 2:  # plain LoRA or random routing: there is no gate to be decisive
        nan = usage.new_full((), float("nan"))
        return StepHealth(nan, nan, None, usage, divergence)
    margin, agreement = gate_decisiveness(logits, noise_scale)
    sampled = (index == logits.detach().argmax(-1)).float().mean() if training else None
    return StepHealth(margin, agreement, sampled, usage, divergence)


# -- as logged scalars (TensorBoard: ``health/layer<L>/step<t>/<metric>``) ------------------------------------
def _finite(value: Tensor | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


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


def health_scalars(health_by_layer: dict[int, Sequence[StepHealth] | None]) -> dict[str, float]:
    """``health/layer<L>/step<t>/<metric>`` for every layer's latest ``RSROutput.health`` (None: not measured)."""
    scalars = {}
    for layer, steps in health_by_layer.items():
        for t, health in enumerate(steps or (), 1):
            for name, value in step_scalars(health).items():
                scalars[f"health/layer{layer}/step{t}/{name}"] = value
    return scalars


def _norm(params: Sequence[nn.Parameter]) -> float | None:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else None


def gradient_scalars(modules: dict[int, nn.Module]) -> dict[str, float]:
    """Gradient norms of each layer's gate and experts (``RecursiveSparseReasoning`` modules by layer, after
    backward and before clipping) and their ratio: a gate whose gradient is orders of magnitude below the
    experts' barely moves at a shared learning rate."""
    scalars = {}
    for layer, rsr in modules.items():
        if rsr.config.num_experts == 1:
            continue
        gate, experts = _norm(list(rsr.gate.parameters())), _norm(list(rsr.experts.parameters()))
        if gate is None or experts is None:
            continue
        scalars[f"health/layer{layer}/gate_grad_norm"] = gate
        scalars[f"health/layer{layer}/expert_grad_norm"] = experts
        if experts > 0:
            scalars[f"health/layer{layer}/gate_to_expert_grad"] = gate / experts
    return scalars
