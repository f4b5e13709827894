"""Token trajectories through the latent steps (paper Fig. 3) and per-token expert maps.

Fig. 3 of the paper projects every vision token of one image, at every latent step of the looped
layer, onto two principal components, once early in sampling (high noise) and once late (low noise):
the trajectories are coherent early and diverge, patch by patch, late. Here the points of a token's
trajectory are the inputs ``h_t`` of its latent steps (``routing_trace(states=True)``); the PCA is fitted
per panel on all steps' tokens of that image at that timestep.

``displacement_coherence`` puts a number on "coherent": the mean cosine similarity between each
token's step-to-step displacement ``h_{t+1} - h_t`` and the mean displacement of all tokens (1: every
token moves the same way; about 0: patch-specific directions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from ..models.inspect import RoutingTrace  # noqa: E402

PHASES = ("early", "late")  # early: the highest timestep (high noise); late: the lowest (low noise)


class TokenPath(NamedTuple):
    """One image's tokens through the latent steps of one layer, at one forward call."""

    timestep: float
    states: Tensor  # (T, N, D) input of every latent step
    experts: Tensor  # (T, N) chosen expert


def token_path(trace: RoutingTrace, layer: int, row: int = 0, phase: str = "early") -> TokenPath:
    """Sample ``row``'s tokens at the call with its highest (``early``) or lowest (``late``) timestep."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    records = [r for r in trace.records if r.layer == layer]
    if not records:
        raise ValueError(f"the trace has no records for layer {layer}")
    if any(r.timestep is None for r in records):
        raise ValueError("token trajectories need diffusion timesteps in the trace")
    if records[0].states is None:
        raise ValueError("the trace has no token states: record it with routing_trace(..., states=True)")
    pick = max if phase == "early" else min
    record = pick(records, key=lambda r: float(r.timestep[row]))
    return TokenPath(float(record.timestep[row]), record.states[:, row], record.experts[:, row])


def pca_2d(states: Tensor) -> Tensor:
    """(T, N, D) -> (T, N, 2): projection on the top two principal components of all T x N tokens.

    Exact SVD of the centred tokens; each component's sign is fixed (largest loading positive) so the
    figure is deterministic."""
    steps, n, d = states.shape
    flat = states.reshape(steps * n, d).double()
    centred = flat - flat.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    comps = vh[:2]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    projected = centred @ comps.t()
    if projected.shape[1] < 2:
        projected = torch.cat([projected, projected.new_zeros(projected.shape[0], 2 - projected.shape[1])], 1)
    return projected.reshape(steps, n, 2).float()


def displacement_coherence(states: Tensor) -> float | None:
    """Mean cosine between each token's step-to-step displacement and the mean displacement (``None`` for T = 1)."""
    if states.shape[0] < 2:
        return None
    moves = (states[1:] - states[:-1]).double()  # (T-1, N, D)
    mean = moves.mean(1, keepdim=True).expand_as(moves)
    return torch.nn.functional.cosine_similarity(moves, mean, dim=-1, eps=1e-12).mean().item()


def trajectory_summary(trace: RoutingTrace, layer: int, rows: Sequence[int]) -> dict:
    """Per phase: the mean timestep and the mean ``displacement_coherence`` over the images ``rows``."""
    out = {}
    for phase in PHASES:
        paths = [token_path(trace, layer, row, phase) for row in rows]
        values = [v for v in (displacement_coherence(p.states) for p in paths) if v is not None]
        out[phase] = {"timestep": float(np.mean([p.timestep for p in paths])),
                      "coherence": float(np.mean(values)) if values else None}
    return out


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _expert_colours(m: int) -> list:
    """One qualitative colour per expert (tab10's blue, orange, green, ... in order)."""
    cmap = plt.get_cmap("tab10" if m <= 10 else "tab20")
    return [cmap(e % cmap.N) for e in range(m)]


def plot_trajectories(trace: RoutingTrace, layer: int, path: str | Path, row: int = 0) -> Path:
    """The Fig. 3 analogue: PCA trajectories of one image's tokens, early (high noise) and late (low noise).

    Grey lines follow each token from latent step 1 to T; markers are coloured by the expert the token
    chose at that step (marker shape = latent step); the black line is the mean token."""
    paths = [token_path(trace, layer, row, phase) for phase in PHASES]
    m = int(trace.for_layer(layer)[0].probs.shape[-1])
    colours, markers = _expert_colours(m), "os^DvP*Xph"
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2))
    for ax, phase, p in zip(axes, PHASES, paths):
        xy = pca_2d(p.states).numpy()  # (T, N, 2)
        ax.plot(xy[:, :, 0], xy[:, :, 1], color="0.6", lw=0.6, alpha=0.7)
        for t in range(xy.shape[0]):
            ax.scatter(xy[t, :, 0], xy[t, :, 1], c=[colours[e] for e in p.experts[t].tolist()], s=14,
                       marker=markers[t % len(markers)], edgecolors="none", label=f"step {t + 1}")
        ax.plot(xy[:, :, 0].mean(1), xy[:, :, 1].mean(1), color="k", lw=1.6, marker="x")
        coherence = displacement_coherence(p.states)
        note = "" if coherence is None else f", coherence {coherence:.2f}"
        ax.set_title(f"{phase}: timestep {p.timestep:.0f}{note}", fontsize=9)
        ax.set_xlabel("PC 1", fontsize=8)
        ax.set_ylabel("PC 2", fontsize=8)
        ax.tick_params(labelsize=7)
    handles = [plt.Line2D([], [], ls="", marker="o", color=colours[e], label=f"expert {e}") for e in range(m)]
    handles += [plt.Line2D([], [], ls="", marker=markers[t % len(markers)], color="0.4", label=f"latent step {t + 1}")
                for t in range(paths[0].states.shape[0])]
    axes[1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(f"token trajectories through the latent steps, layer {layer}", fontsize=10)
    return _save(fig, path)


def _grid(n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is not None:
        if grid[0] * grid[1] != n:
            raise ValueError(f"grid {grid} does not hold {n} tokens")
        return grid
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} tokens are not a square patch grid: pass grid=(rows, cols)")
    return side, side


def plot_expert_maps(trace: RoutingTrace, layer: int, path: str | Path, row: int = 0,
                     grid: tuple[int, int] | None = None, image: np.ndarray | None = None) -> Path:
    """Chosen expert of every token on the patch grid: one panel per latent step, early and late timestep.

    ``image`` (H, W, 3), the generated sample of ``row``, is shown in a first column when given."""
    paths = [token_path(trace, layer, row, phase) for phase in PHASES]
    steps, n = paths[0].experts.shape
    rows, cols = _grid(n, grid)
    m = int(trace.for_layer(layer)[0].probs.shape[-1])
    cmap = matplotlib.colors.ListedColormap(_expert_colours(m))
    first = int(image is not None)
    fig, axes = plt.subplots(2, steps + first, figsize=(2.2 * (steps + first) + 1.2, 4.6), squeeze=False)
    if image is not None:
        axes[0, 0].imshow(image)
        axes[0, 0].set_title("sample", fontsize=8)
        for ax in axes[:, 0]:
            ax.axis("off")
    for i, (phase, p) in enumerate(zip(PHASES, paths)):
        for t in range(steps):
            ax = axes[i, t + first]
            image = ax.imshow(p.experts[t].reshape(rows, cols).numpy(), cmap=cmap, vmin=-0.5, vmax=m - 0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{phase} (t={p.timestep:.0f}), step {t + 1}", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), ticks=range(m), shrink=0.8, label="expert")
    fig.suptitle(f"chosen expert per patch, layer {layer}", fontsize=10)
    return _save(fig, path)


def plot_gate_entropy(entropy: Mapping[int, Sequence[float]], num_experts: int, path: str | Path) -> Path:
    """Mean gate entropy per latent step, one line per layer; the dashed line is log M (a uniform gate)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for layer, values in sorted(entropy.items()):
        ax.plot(range(1, len(values) + 1), values, marker="o", label=f"layer {layer}")
    ax.axhline(math.log(num_experts), color="k", ls="--", lw=0.8, label="log M (uniform)")
    steps = max(len(v) for v in entropy.values())
    ax.set_xticks(range(1, steps + 1))
    ax.set_ylim(0, max(math.log(num_experts), 1e-3) * 1.1)
    ax.set_xlabel("latent step", fontsize=8)
    ax.set_ylabel("gate entropy (nats)", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title("gate entropy per latent step", fontsize=9)
    return _save(fig, path)
