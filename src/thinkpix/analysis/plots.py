"""Routing figures (headless, Agg): the analogue of the paper's Fig. 4 and the per-step statistics."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..models.inspect import RoutingTrace  # noqa: E402


def usage_by_timestep(trace: RoutingTrace, layer: int, buckets: int = 10, max_timestep: float = 1000.0) -> np.ndarray:
    """(buckets, T, M): share of tokens per expert, per diffusion-timestep bucket and latent step."""
    records = trace.for_layer(layer)
    if not records:
        raise ValueError(f"the trace has no records for layer {layer} (layers: {trace.layers})")
    steps, m = records[0].probs.shape[0], records[0].probs.shape[-1]
    counts = np.zeros((buckets, steps, m))
    for record in records:
        if record.timestep is None:
            raise ValueError("usage_by_timestep needs diffusion timesteps in the trace")
        bucket = (record.timestep / max_timestep * buckets).long().clamp(0, buckets - 1)  # (B,)
        one_hot = torch.nn.functional.one_hot(record.experts, m).float().sum(2)  # (T, B, M)
        for b in range(one_hot.shape[1]):
            counts[bucket[b]] += one_hot[:, b].numpy()
    totals = counts.sum(-1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def plot_usage_heatmap(trace: RoutingTrace, layer: int, path: str | Path, buckets: int = 10) -> Path:
    """One panel per expert: share of tokens by diffusion timestep (x) and latent step (y)."""
    usage = usage_by_timestep(trace, layer, buckets)
    steps, m = usage.shape[1], usage.shape[2]
    fig, axes = plt.subplots(1, m, figsize=(2.6 * m + 0.6, 0.45 * steps + 1.6), squeeze=False)
    for e in range(m):
        ax = axes[0, e]
        image = ax.imshow(usage[:, :, e].T, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower",
                          extent=(0, 1000, 0.5, steps + 0.5))
        ax.set_title(f"expert {e}", fontsize=9)
        ax.set_xlabel("diffusion timestep", fontsize=8)
        ax.set_yticks(range(1, steps + 1))
        if e == 0:
            ax.set_ylabel("latent step", fontsize=8)
    fig.colorbar(image, ax=axes[0, :].tolist(), shrink=0.8, label="share of tokens")
    fig.suptitle(f"expert usage, layer {layer}", fontsize=10, y=1.04)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
