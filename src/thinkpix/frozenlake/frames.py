"""FrozenLake frames exactly as gymnasium 1.3.0 renders them, and training sets of trajectories.

gymnasium's ``FrozenLakeEnv`` (``render_mode="rgb_array"``) draws a grid of up to 8x8 cells
at 64 px each, tile by tile: ice, then the hole / goal / stool sprite, a 1 px border, and the
elf (facing the last action, DOWN before the first step) or, on a hole, a cracked hole. That
rendering reproduces the VSP benchmark's images pixel for pixel. Each cell's pixels depend only
on its tile and on whether (and facing where) the agent stands on it, so this module cuts those
cell appearances once from frames the env itself renders and composes every frame from them;
``tests/test_frozenlake_data.py`` checks the result against ``env.render()`` pixel for pixel.
Agent positions always come from stepping the real env.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

import gymnasium as gym
import numpy as np

from .maps import DOWN, Cell, check_desc, find_cell, map_set, path_cells, shortest_path

CELL_PX = 64  # gymnasium's cell size for grids up to 8x8 (window min(64 * n, 512) px).
_ATLAS_DESC = ("SF", "HG")  # a map holding every tile kind, rendered to cut the tiles from

TileKey = tuple[str, int | None]


def make_env(desc: Sequence[str], render_mode: str | None = None) -> gym.Env:
    """``gymnasium.make("FrozenLake-v1", desc=desc, is_slippery=False)``, as VSP evaluates plans.

    The env keeps ``make``'s wrappers, including the registered 100-step ``TimeLimit``.
    Rendering runs headless (SDL dummy video and audio drivers unless already set).
    """
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    return gym.make("FrozenLake-v1", desc=list(desc), is_slippery=False, render_mode=render_mode)


def check_cell_px(cell_px: int) -> int:
    """Return ``cell_px`` if it divides gymnasium's 64 px cell, else raise ValueError."""
    if isinstance(cell_px, bool) or not isinstance(cell_px, (int, np.integer)) or cell_px < 1 or CELL_PX % cell_px:
        raise ValueError(f"cell_px must be a divisor of {CELL_PX} (1, 2, 4, ..., 64), got {cell_px!r}")
    return int(cell_px)


def downsample(frames: np.ndarray, factor: int) -> np.ndarray:
    """Area-average the (H, W) axes of ``(..., H, W, C)`` frames by an integer ``factor``.

    uint8 input gives uint8 output (rounded to nearest); float input keeps its dtype. With
    ``factor`` dividing 64 every averaged block lies inside one grid cell.
    """
    frames = np.asarray(frames)
    *lead, h, w, ch = frames.shape
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"factor must be >= 1 and divide the frame size {h}x{w}, got {factor}")
    blocks = frames.reshape(*lead, h // factor, factor, w // factor, factor, ch)
    mean = blocks.mean(axis=(-4, -2))
    if frames.dtype == np.uint8:
        return np.rint(mean).astype(np.uint8)
    return mean.astype(frames.dtype)


def to_unit_float(frames: np.ndarray) -> np.ndarray:
    """float32 RGB in [0, 1] from uint8 (0..255) or float (0..1, clipped) channel-last frames.

    Float input far outside [0, 1] raises ValueError, which catches [-1, 1] or 0..255 outputs.
    """
    x = np.asarray(frames)
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"frames must be channel-last RGB (..., H, W, 3), got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    if x.size and (not np.isfinite(x).all() or x.min() < -0.5 or x.max() > 1.5):
        raise ValueError(
            f"float frames must be in [0, 1], got range [{x.min():.3g}, {x.max():.3g}] "
            "(map [-1, 1] outputs with (x + 1) / 2)"
        )
    return np.clip(x, 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def _atlas() -> dict[TileKey, np.ndarray]:
    """Every 64 px cell appearance, cut from frames gymnasium renders for ``_ATLAS_DESC``.

    Keys are ``(tile, None)`` for a cell without the agent and ``(tile, action)`` for the
    agent on it, drawn as after ``action`` (on "H" every action gives the cracked hole).
    """
    env = make_env(_ATLAS_DESC, render_mode="rgb_array")
    env.reset(seed=0)
    lake = env.unwrapped
    tiles: dict[TileKey, np.ndarray] = {}
    try:
        for state in range(4):
            agent = divmod(state, 2)
            for action in range(4):
                lake.s, lake.lastaction = state, action
                frame = env.render()
                for r, row in enumerate(_ATLAS_DESC):
                    for c, tile in enumerate(row):
                        key = (tile, action) if (r, c) == agent else (tile, None)
                        tiles[key] = frame[r * CELL_PX : (r + 1) * CELL_PX, c * CELL_PX : (c + 1) * CELL_PX].copy()
    finally:
        env.close()
    return tiles


@functools.lru_cache(maxsize=8)
def cell_tiles(cell_px: int = CELL_PX) -> Mapping[TileKey, np.ndarray]:
    """Cell appearances at ``cell_px`` (area-averaged from the env's 64 px), keyed as ``_atlas``."""
    factor = CELL_PX // check_cell_px(cell_px)
    return {key: downsample(tile, factor) for key, tile in _atlas().items()}


def _background(desc: Sequence[str], cell_px: int) -> np.ndarray:
    tiles = cell_tiles(cell_px)
    return np.concatenate([np.concatenate([tiles[(tile, None)] for tile in row], axis=1) for row in desc], axis=0)


def _paste_agent(
    background: np.ndarray, desc: Sequence[str], cell: Cell, last_action: int | None, cell_px: int
) -> np.ndarray:
    frame = background.copy()
    r, c = cell
    action = DOWN if last_action is None else int(last_action)
    frame[r * cell_px : (r + 1) * cell_px, c * cell_px : (c + 1) * cell_px] = cell_tiles(cell_px)[(desc[r][c], action)]
    return frame


def render_frame(desc: Sequence[str], cell: Cell, last_action: int | None = None, cell_px: int = CELL_PX) -> np.ndarray:
    """The env's ``rgb_array`` frame with the agent at ``cell`` facing ``last_action``.

    ``last_action=None`` is the pose before any step (gymnasium draws it facing DOWN). Returns
    ``(n * cell_px, n * cell_px, 3)`` uint8; ``cell_px < 64`` is the area-averaged frame.
    """
    desc = check_desc(desc)
    cell_px = check_cell_px(cell_px)
    return _paste_agent(_background(desc, cell_px), desc, cell, last_action, cell_px)


def trajectory_frames(desc: Sequence[str], actions: Sequence[int], cell_px: int = CELL_PX) -> np.ndarray:
    """``(T + 1, H, W, 3)`` uint8: the start frame and the frame after each of the T actions.

    The actions are stepped in the real ``FrozenLake-v1`` env; its state and last action after
    each step are drawn as ``env.render()`` would. Raises ValueError for an action after the
    episode ended (goal, hole, or the 100-step time limit).
    """
    desc = check_desc(desc)
    cell_px = check_cell_px(cell_px)
    n = len(desc)
    env = make_env(desc)
    state, _ = env.reset(seed=0)
    poses: list[tuple[int, int | None]] = [(state, None)]
    ended = False
    try:
        for i, action in enumerate(actions):
            if ended:
                raise ValueError(f"action {i} comes after the episode ended")
            state, _, terminated, truncated, _ = env.step(int(action))
            poses.append((state, env.unwrapped.lastaction))
            ended = terminated or truncated
    finally:
        env.close()
    background = _background(desc, cell_px)
    return np.stack([_paste_agent(background, desc, divmod(s, n), a, cell_px) for s, a in poses])


def build_dataset(
    size: int, n_maps: int, split: str = "train", seed: int = 0, cell_px: int = 16, hole_prob: float = 0.2
) -> dict[str, np.ndarray]:
    """Shortest-path trajectories on ``map_set(size, n_maps, split, seed)``, as arrays.

    Returns (N = n_maps, T = longest path in the set):

    - ``frames``: ``(N, T + 1, size * cell_px, size * cell_px, 3)`` uint8; frame 0 is the start,
      frame t follows action t; after the goal the last frame is repeated (the agent stays).
    - ``actions``: ``(N, T)`` int64 BFS actions (0=LEFT, 1=DOWN, 2=RIGHT, 3=UP), -1 as padding.
    - ``lengths``: ``(N,)`` int64 number of actions of each trajectory.
    - ``cells``: ``(N, T + 1, 2)`` int64 agent (row, col) per frame, padded with the goal.
    - ``maps``: ``(N, size)`` str, the ``desc`` rows (``list(maps[i])`` gives the map back).
    """
    maps = map_set(size, n_maps, split, seed, hole_prob)
    plans = [shortest_path(desc) for desc in maps]
    horizon = max((len(plan) for plan in plans), default=0)
    px = size * check_cell_px(cell_px)
    frames = np.empty((len(maps), horizon + 1, px, px, 3), dtype=np.uint8)
    actions = np.full((len(maps), horizon), -1, dtype=np.int64)
    cells = np.empty((len(maps), horizon + 1, 2), dtype=np.int64)
    for i, (desc, plan) in enumerate(zip(maps, plans)):
        steps = len(plan)
        frames[i, : steps + 1] = trajectory_frames(desc, plan, cell_px)
        frames[i, steps + 1 :] = frames[i, steps]
        actions[i, :steps] = plan
        cells[i, : steps + 1] = [find_cell(desc, "S"), *path_cells(desc, plan)]
        cells[i, steps + 1 :] = cells[i, steps]
    return {
        "frames": frames,
        "actions": actions,
        "lengths": np.array([len(plan) for plan in plans], dtype=np.int64),
        "cells": cells,
        "maps": np.array(maps, dtype=f"<U{size}").reshape(len(maps), size),
    }
