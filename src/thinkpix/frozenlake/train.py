"""Training of the FrozenLake visual planners (``model.VisualPlanner``), seeded and deterministic on CPU.

Data: for each map of ``maps.map_set`` the BFS shortest plan, the start frame (``frames.render_frame``, the env's
own pixels) and, for every move t, which of the 20 cell appearances each cell shows after it (tile x agent
pose, ``model.APPEARANCES``); the frame after move t is ``appearance_atlas[appear[t]]``, pixel-identical to
``frames.trajectory_frames`` (tested). Maps whose plan is longer than ``plan_steps`` are left out of training.

Loss per batch (one map size per batch, sizes taken in turn):
    RSR:      CE(gate logits at every token, true move t) + recon_weight * frame loss of move t, both over
              moves t <= L only (steps after the goal are masked, see model.py). Frame loss: per-cell CE of the
              decoded appearance logits against the true appearance ("cells" decoder, default) or the pixel
              MSE ("pixels"), the agent's cell weighted as much as all other cells together
    baseline: CE(action logits of step t, true move t) over t <= L
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import TrainConfig
from .frames import render_frame
from .maps import find_cell, map_set, path_cells, shortest_path
from .model import POSES, VisualPlanner, appearance_atlas, appearance_index


@dataclass
class PlanData:
    """Plans of one map size, as tensors (N maps, P = plan_steps, n x n cells)."""

    size: int
    maps: list[list[str]]
    start: Tensor  # (N, n*c, n*c, 3) float in [0, 1]: start frames
    actions: Tensor  # (N, P) long, -1 after the goal
    lengths: Tensor  # (N,) long
    appear: Tensor  # (N, P, n*n) long: cell appearance after move t (the goal frame repeats after the goal)


def plan_data(size: int, n_maps: int, split: str, plan_steps: int, cell_px: int, seed: int = 0,
              maps: Sequence[Sequence[str]] | None = None, drop_long: bool = True) -> PlanData:
    """Shortest-path plans on ``map_set(size, n_maps, split, seed)`` (or on ``maps``)."""
    maps = [list(m) for m in (map_set(size, n_maps, split, seed) if maps is None else maps)]
    kept, starts, actions, lengths, appear = [], [], [], [], []
    for desc in maps:
        plan = shortest_path(desc)
        if drop_long and len(plan) > plan_steps:
            continue
        plan = plan[:plan_steps]
        base = np.array([[appearance_index(t, None) for t in row] for row in desc]).reshape(-1)  # (n*n,)
        cells = path_cells(desc, plan)
        rows = np.empty((plan_steps, size * size), dtype=np.int64)
        for t in range(plan_steps):
            k = min(t, len(plan) - 1)  # after the goal the last frame repeats
            (r, c), a = cells[k], plan[k]
            rows[t] = base
            rows[t, r * size + c] = appearance_index(desc[r][c], a)
        kept.append(desc)
        starts.append(render_frame(desc, find_cell(desc, "S"), None, cell_px))
        actions.append(plan + [-1] * (plan_steps - len(plan)))
        lengths.append(len(plan))
        appear.append(rows)
    start = torch.from_numpy(np.stack(starts).astype(np.float32) / 255.0)
    return PlanData(size, kept, start, torch.tensor(actions), torch.tensor(lengths), torch.from_numpy(np.stack(appear)))


def true_frames(data: PlanData, cell_px: int) -> Tensor:
    """(N, P, n*c, n*c, 3) frames after every move, composed from the env's cell appearances."""
    n, c = data.size, cell_px
    pix = appearance_atlas(cell_px)[data.appear].view(*data.appear.shape[:2], n, n, c, c, 3)
    return pix.permute(0, 1, 2, 4, 3, 5, 6).reshape(*data.appear.shape[:2], n * c, n * c, 3)


def planner_loss(model: VisualPlanner, data: PlanData, idx: Tensor, atlas: Tensor,
                 recon_weight: float | None = None) -> tuple[Tensor, dict]:
    """Loss on maps ``idx`` of ``data``; returns (loss, {"ce", "recon", "acc", "frame"}) ("frame": share of
    decoded steps whose every cell is right, "cells" decoder only)."""
    if recon_weight is None:
        recon_weight = 1.0 if model.config.decoder == "cells" else 10.0
    start, actions, lengths = data.start[idx], data.actions[idx], data.lengths[idx]
    p = actions.shape[1]
    valid = torch.arange(p)[None] < lengths[:, None]  # (B, P): moves 1..L
    target = actions[valid]  # (K,)
    if not model.config.recursive:
        logits = model(start).logits[:, :, 0][valid]  # (K, 4)
        ce = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean().item()
        return ce, {"ce": ce.item(), "recon": 0.0, "acc": acc, "frame": float("nan")}
    out = model(start, actions)
    logits = out.logits[valid]  # (K, N, M): every token votes for move t
    ce = F.cross_entropy(logits.flatten(0, 1), target.repeat_interleave(logits.shape[1]))
    pred = model.decoder(out.states[valid])  # (K, N, 20) appearance logits or (K, N, c*c*3) pixels
    appear = data.appear[idx][valid]  # (K, N)
    if model.config.decoder == "cells":
        cell_err = F.cross_entropy(pred.flatten(0, 1), appear.flatten(), reduction="none").view(appear.shape)
        frame_ok = (pred.argmax(-1) == appear).all(-1).float().mean().item()  # whole frame right
    else:
        cell_err = (pred - atlas[appear]).pow(2).mean(-1)  # (K, N)
        frame_ok = float("nan")
    # The agent's cell weighs as much as all the others together: a plain per-cell loss is dominated by the
    # static background and lets the decoder drop the agent (measured with pixel MSE: the agent vanished
    # after move 1).
    weight = 1.0 + appear.shape[1] * (appear % len(POSES) != 0).float()  # (K, N)
    recon = (weight * cell_err).sum() / weight.sum()
    acc = (logits.mean(1).argmax(-1) == target).float().mean().item()
    return ce + recon_weight * recon, {"ce": ce.item(), "recon": recon.item(), "acc": acc, "frame": frame_ok}


def train_planner(model: VisualPlanner, cfg: TrainConfig, data: dict[int, PlanData] | None = None,
                  log: Callable[[str], None] | None = print, log_every: int = 100) -> dict:
    """Train ``model`` in place with AdamW (linear warmup, cosine decay); returns a summary dict."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    c = model.config
    if data is None:
        data = {s: plan_data(s, cfg.maps_per_size, "train", c.plan_steps, c.cell_px, cfg.seed) for s in cfg.sizes}
    atlas = appearance_atlas(c.cell_px)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    t0, history, step = time.time(), [], 0
    sizes = list(cfg.sizes)
    for step in range(cfg.steps):
        d = data[sizes[step % len(sizes)]]
        idx = torch.randint(len(d.maps), (min(cfg.batch, len(d.maps)),), generator=gen)
        loss, info = planner_loss(model, d, idx, atlas, cfg.recon_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append(info)
        if log is not None and (step % log_every == 0 or step == cfg.steps - 1):
            recent = history[-log_every:]
            mean = {k: sum(h[k] for h in recent) / len(recent) for k in info}
            log(f"step {step:5d} size {d.size} ce {mean['ce']:.4f} recon {mean['recon']:.5f} "
                f"acc {mean['acc']:.3f} frame {mean['frame']:.3f} lr {sched.get_last_lr()[0]:.2e} "
                f"{time.time() - t0:6.0f}s")
        if cfg.max_minutes is not None and time.time() - t0 > 60 * cfg.max_minutes:
            if log is not None:
                log(f"time budget of {cfg.max_minutes} min reached at step {step}")
            break
    model.eval()
    return {"steps": step + 1, "seconds": time.time() - t0, "history": history}

