"""Closed-loop evaluation of FrozenLake planners on held-out maps, and step-by-step strips (paper Figs. 6/7).

RSR planner: start frame -> decoded frames after every latent step (gate alone) -> ``replay.evaluate_plans``
(agent detector -> frames to actions, with diagonal / jump moves counted invalid -> replay in
``FrozenLake-v1``, is_slippery=False). The non-recursive baseline outputs actions, which are replayed the same
way; random walk and the BFS oracle come from ``baselines.baseline_plans``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .baselines import baseline_plans
from .frames import render_frame
from .maps import find_cell, map_set
from .model import VisualPlanner
from .replay import SizeStats, evaluate_plans, frames_to_actions
from .train import plan_data, true_frames

METHODS = ("rsr", "flat", "random", "oracle")


@torch.no_grad()
def model_plans(model: VisualPlanner, maps: Sequence[Sequence[str]], chunk: int = 64) -> list:
    """Plans of ``model`` for maps of one size: (P, H, W, 3) uint8 frames (RSR) or action lists (baseline)."""
    c = model.config
    data = plan_data(len(maps[0]), len(maps), "heldout", c.plan_steps, c.cell_px, maps=maps, drop_long=False)
    model.eval()
    plans: list = []
    for i in range(0, len(maps), chunk):
        frames, votes = model.plan(data.start[i : i + chunk])
        if frames is None:
            plans += [v.tolist() for v in votes]
        else:
            plans += list((frames * 255).round().to(torch.uint8).numpy())
    return plans


def heldout_maps(size: int, n: int, seed: int = 0) -> list[list[str]]:
    return map_set(size, n, "heldout", seed)


def evaluate(method: str | VisualPlanner, sizes: Sequence[int], n_maps: int, seed: int = 0) -> dict[int, SizeStats]:
    """Per-size closed-loop stats of a planner or a baseline ("random", "oracle") on held-out maps."""
    stats: dict[int, SizeStats] = {}
    for size in sizes:
        maps = heldout_maps(size, n_maps, seed)
        learned = isinstance(method, VisualPlanner)
        plans = model_plans(method, maps) if learned else baseline_plans(method, maps, seed)
        stats.update(evaluate_plans(maps, plans))
    return stats


def results_table(results: dict[str, dict[int, SizeStats]]) -> str:
    """Markdown table: one row per (size, method)."""
    lines = ["| size | method | n | success | hole | invalid | frame acc | mean steps |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    sizes = sorted({s for stats in results.values() for s in stats})
    for size in sizes:
        for name, stats in results.items():
            if size not in stats:
                continue
            s = stats[size]
            acc = "n/a" if math.isnan(s.frame_accuracy) else f"{s.frame_accuracy:.3f}"
            lines.append(f"| {size}x{size} | {name} | {s.n} | {s.success_rate:.3f} | {s.hole_rate:.3f} | "
                         f"{s.invalid_rate:.3f} | {acc} | {s.mean_steps:.1f} |")
    return "\n".join(lines)


def strip(model: VisualPlanner, desc: Sequence[str], gap: int = 2) -> tuple[np.ndarray, dict]:
    """(H, W, 3) uint8 image: top row the start frame then the decoded frame after each latent step, up to
    the first frame whose agent is on the goal or a hole (all P if none); bottom row the true BFS frames.
    Returns the image and a summary (decoded actions, invalid moves, success)."""
    c = model.config
    desc = list(desc)
    n = len(desc)
    data = plan_data(n, 1, "heldout", c.plan_steps, c.cell_px, maps=[desc], drop_long=False)
    frames, votes = model.plan(data.start)
    if frames is None:
        raise ValueError("strips need the RSR planner (the baseline predicts actions, not frames)")
    pred = (frames[0] * 255).round().to(torch.uint8).numpy()  # (P, H, W, 3)
    decoded = frames_to_actions(desc, pred)
    shown = min(len(decoded.cells), c.plan_steps)
    for i, cell in enumerate(decoded.cells):
        if desc[cell[0]][cell[1]] in "HG":
            shown = i + 1
            break
    truth = (true_frames(data, c.cell_px)[0] * 255).round().to(torch.uint8).numpy()
    length = int(data.lengths[0])
    start = render_frame(desc, find_cell(desc, "S"), None, c.cell_px)
    px = start.shape[0]
    cols = 1 + max(shown, length)
    image = np.full((2 * px + gap, cols * (px + gap) - gap, 3), 255, dtype=np.uint8)
    for row, seq in enumerate((pred[:shown], truth[:length])):
        for j, frame in enumerate([start, *seq]):
            y, x = row * (px + gap), j * (px + gap)
            image[y : y + px, x : x + px] = frame
    from .replay import replay

    summary = {"experts": votes[0, :shown].tolist(), "actions": list(decoded.actions),
               "invalid_moves": len(decoded.invalid_moves), "success": replay(desc, decoded).success,
               "oracle_length": length}
    return image, summary


def save_strip(model: VisualPlanner, desc: Sequence[str], path: str | Path, scale: int = 2, gap: int = 2) -> dict:
    """Write ``strip`` as a PNG (nearest-neighbour upscaled by ``scale``) with the step number over every column
    (``start``, then the frame after step k; bare numbers on narrow columns) and the rows named ``decoded`` and
    ``BFS``; returns its summary."""
    from PIL import Image

    from ..images import label_rows_and_columns

    image, summary = strip(model, desc, gap)
    cell_px = (image.shape[0] - gap) // 2
    columns = (image.shape[1] + gap) // (cell_px + gap)
    wide = cell_px * scale >= 36  # room for "step k"; narrower columns get the bare number (0 = start)
    labels = ["start", *(f"step {k}" for k in range(1, columns))] if wide else [str(k) for k in range(columns)]
    labelled = label_rows_and_columns(image.repeat(scale, 0).repeat(scale, 1), cell_px * scale, gap * scale,
                                      labels, ["decoded", "BFS"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labelled).save(path)
    return summary
