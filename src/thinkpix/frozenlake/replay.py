"""Closed-loop scoring of FrozenLake plans: frames -> agent cells -> actions -> env replay.

A visual planner outputs, for a start frame, the frames it predicts after each move. Those
frames are read back into agent cells by template matching against the env's own cell
appearances (``frames.cell_tiles``), consecutive cells are turned into actions, and the actions
are replayed in ``gymnasium.make("FrozenLake-v1", desc=desc, is_slippery=False)``. As in the
VSP benchmark's evaluator (UCSB-NLP-Chang/Visual-Spatial-Planning, ``maze/task-main/eval.py``)
a plan is correct when the replay ends with reward > 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .frames import cell_tiles, check_cell_px, make_env, to_unit_float
from .maps import Cell, bfs_distances, check_desc, find_cell, move_action


@dataclass(frozen=True)
class Detection:
    """Agent cell read from one frame; ``confidence`` in [0, 1] (see ``detect_agents``)."""

    cell: Cell
    confidence: float


@dataclass(frozen=True)
class InvalidMove:
    """Consecutive detected cells that no single action connects (frame ``index`` is 0-based)."""

    index: int
    src: Cell
    dst: Cell
    kind: str  # "diagonal" or "jump"


@dataclass(frozen=True)
class FramePlan:
    """Actions decoded from predicted frames.

    ``actions`` are the valid moves up to the first invalid move or the first frame showing the
    agent on a hole or the goal; ``cells``/``confidences`` cover every frame; ``stays`` counts
    frames (before that terminal frame) whose agent did not move; ``invalid_moves`` lists every
    diagonal step or jump before it.
    """

    actions: tuple[int, ...]
    cells: tuple[Cell, ...]
    confidences: tuple[float, ...]
    invalid_moves: tuple[InvalidMove, ...]
    stays: int


@dataclass(frozen=True)
class ReplayResult:
    """Outcome of replaying actions in FrozenLake-v1 (``cells``: agent cell after each step)."""

    success: bool
    hole: bool
    truncated: bool
    steps: int
    invalid_moves: int
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class PlanScore:
    """One plan: its replay, the cells it predicts per step, and their ``frame_accuracy``."""

    size: int
    result: ReplayResult
    cells: tuple[Cell, ...]
    frame_accuracy: float
    confidence: float  # mean detector confidence; nan for action plans


@dataclass(frozen=True)
class SizeStats:
    """Aggregates over the plans of one grid size (rates are fractions of plans)."""

    size: int
    n: int
    success_rate: float
    hole_rate: float
    invalid_rate: float
    frame_accuracy: float
    mean_steps: float


@functools.lru_cache(maxsize=64)
def _templates(desc: tuple[str, ...], cell_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened cell appearances in [0, 1], row-major: empty ``(n * n, D)``, agent ``(n * n, 4, D)``."""
    tiles = cell_tiles(cell_px)
    empty = np.stack([[tiles[(t, None)] for t in row] for row in desc])
    agent = np.stack([[[tiles[(t, a)] for a in range(4)] for t in row] for row in desc])
    n = len(desc)
    return empty.reshape(n * n, -1) / np.float32(255), agent.reshape(n * n, 4, -1) / np.float32(255)


def detect_agents(desc: Sequence[str], frames: np.ndarray) -> list[Detection]:
    """Agent cell and confidence for each of ``(T, H, W, 3)`` frames (uint8, or float in [0, 1]).

    The frame size must be ``n * cell_px`` with ``cell_px`` dividing 64 (gymnasium's cell size).
    Each cell is compared (mean squared error) with the env's appearance of that cell without
    the agent (``d_empty``) and with it in any of the four poses (``d_agent``); its agent score
    is ``p = d_empty / (d_empty + d_agent)``, 1 for an exact agent match and 0 for an exact empty
    cell. The detected cell has the highest ``p``; confidence is its ``p`` minus the runner-up's,
    so it is low for frames with no agent, two agents, or an ambiguous blur.
    """
    desc = check_desc(desc)
    x = to_unit_float(frames)
    n = len(desc)
    if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[1] % n:
        raise ValueError(f"frames must be (T, H, H, 3) with H a multiple of {n}, got {x.shape}")
    cell_px = check_cell_px(x.shape[1] // n)
    empty, agent = _templates(tuple(desc), cell_px)
    cells = x.reshape(len(x), n, cell_px, n, cell_px, 3).transpose(1, 3, 0, 2, 4, 5).reshape(n * n, len(x), -1)
    dim = cells.shape[-1]
    sq = (cells**2).mean(-1)[..., None]
    d_empty = sq[..., 0] - 2 * np.matmul(cells, empty[..., None])[..., 0] / dim + (empty**2).mean(-1)[:, None]
    d_agent = sq - 2 * np.matmul(cells, agent.transpose(0, 2, 1)) / dim + (agent**2).mean(-1)[:, None]
    d_empty, d_agent = np.maximum(d_empty, 0), np.maximum(d_agent.min(-1), 0)
    score = (d_empty / (d_empty + d_agent + 1e-12)).T
    top2 = np.sort(score, axis=1)[:, -2:]
    best = score.argmax(axis=1)
    return [Detection(divmod(int(b), n), float(hi - lo)) for b, (lo, hi) in zip(best, top2)]


def frames_to_actions(desc: Sequence[str], frames: np.ndarray) -> FramePlan:
    """Decode predicted frames into a plan, starting from the map's S cell.

    ``frames`` are the frames *after* each move (``trajectory_frames(desc, a)[1:]`` for true
    ones), not the start frame. A step to a 4-neighbour is an action; no move is skipped and
    counted in ``stays`` (so padding frames repeated at the goal are harmless); a diagonal step
    or a jump of more than one cell is an invalid move, recorded, and ends the action list (the
    env could not follow the frames from there). Decoding stops at the first frame whose agent
    is on a hole or the goal, as the episode would.
    """
    desc = check_desc(desc)
    detections = detect_agents(desc, frames) if len(frames) else []
    prev = find_cell(desc, "S")
    actions: list[int] = []
    invalid: list[InvalidMove] = []
    stays = 0
    for index, det in enumerate(detections):
        cell = det.cell
        if cell == prev:
            stays += 1
            continue
        action = move_action(prev, cell)
        if action is None:
            diagonal = abs(cell[0] - prev[0]) == 1 and abs(cell[1] - prev[1]) == 1
            invalid.append(InvalidMove(index, prev, cell, "diagonal" if diagonal else "jump"))
        elif not invalid:
            actions.append(action)
        prev = cell
        if desc[cell[0]][cell[1]] in "HG":
            break
    return FramePlan(
        actions=tuple(actions),
        cells=tuple(d.cell for d in detections),
        confidences=tuple(d.confidence for d in detections),
        invalid_moves=tuple(invalid),
        stays=stays,
    )


def replay(desc: Sequence[str], plan: Sequence[int] | FramePlan) -> ReplayResult:
    """Replay ``plan`` in ``FrozenLake-v1`` (is_slippery=False) the way VSP's evaluator does.

    Actions are stepped until the episode terminates (goal or hole) or hits the env's 100-step
    time limit; later actions are ignored. ``success`` is reward > 0 at the end. A FramePlan's
    invalid moves are carried into ``invalid_moves`` (action lists have none); an action outside
    0..3 raises ValueError.
    """
    desc = check_desc(desc)
    actions = plan.actions if isinstance(plan, FramePlan) else tuple(plan)
    if any(int(a) != a or not 0 <= a <= 3 for a in actions):
        raise ValueError(f"actions must be ints in 0..3 (LEFT, DOWN, RIGHT, UP), got {list(actions)}")
    n = len(desc)
    env = make_env(desc)
    env.reset(seed=0)
    cells: list[Cell] = []
    reward, terminated, truncated = 0.0, False, False
    try:
        for action in actions:
            state, reward, terminated, truncated, _ = env.step(int(action))
            cells.append(divmod(int(state), n))
            if terminated or truncated:
                break
    finally:
        env.close()
    return ReplayResult(
        success=float(reward) > 0,
        hole=bool(terminated) and desc[cells[-1][0]][cells[-1][1]] == "H",
        truncated=bool(truncated),
        steps=len(cells),
        invalid_moves=len(plan.invalid_moves) if isinstance(plan, FramePlan) else 0,
        cells=tuple(cells),
    )


def frame_accuracy(desc: Sequence[str], cells: Sequence[Cell]) -> float:
    """Fraction of steps t = 1..T whose cell is where *a* shortest S->G path is after t moves.

    For a shortest-path length L, cell c is right at step t <= L when BFS distances give
    ``dist(S, c) == t`` and ``dist(c, G) == L - t`` (so every shortest path counts, not only
    ``shortest_path``'s tie-breaking); for t > L only G is right. nan for no cells.
    """
    if not cells:
        return math.nan
    goal = find_cell(desc, "G")
    from_start, to_goal = bfs_distances(desc, find_cell(desc, "S")), bfs_distances(desc, goal)
    length = int(from_start[goal])
    hits = [
        (from_start[c] == t and to_goal[c] == length - t) if t <= length else tuple(c) == goal
        for t, c in enumerate(cells, start=1)
    ]
    return float(np.mean(hits))


def score_plan(desc: Sequence[str], plan: Sequence[int] | np.ndarray) -> PlanScore:
    """Score one plan: an action list, or ``(T, H, W, 3)`` predicted frames after the start.

    Action plans are scored on the cells their replay visits; frame plans on the detected cells.
    """
    desc = check_desc(desc)
    is_frames = np.ndim(plan) == 4
    if is_frames:
        decoded = frames_to_actions(desc, plan)
        result, cells = replay(desc, decoded), decoded.cells
        confidence = float(np.mean(decoded.confidences)) if cells else math.nan
    else:
        result = replay(desc, [int(a) for a in plan])
        cells, confidence = result.cells, math.nan
    return PlanScore(len(desc), result, cells, frame_accuracy(desc, cells), confidence)


def evaluate_plans(maps: Sequence[Sequence[str]], plans: Sequence[Sequence[int] | np.ndarray]) -> dict[int, SizeStats]:
    """Per-size success, hole and invalid-move rates, frame accuracy and mean replayed steps.

    ``plans[i]`` is for ``maps[i]`` (see ``score_plan``). ``invalid_rate`` is the fraction of
    plans with at least one diagonal step or jump; ``frame_accuracy`` pools all steps of the
    size's plans (see ``frame_accuracy``).
    """
    if len(maps) != len(plans):
        raise ValueError(f"got {len(maps)} maps but {len(plans)} plans")
    by_size: dict[int, list[PlanScore]] = {}
    for desc, plan in zip(maps, plans):
        score = score_plan(desc, plan)
        by_size.setdefault(score.size, []).append(score)
    stats = {}
    for size, scores in sorted(by_size.items()):
        frames = sum(len(s.cells) for s in scores)
        correct = sum(s.frame_accuracy * len(s.cells) for s in scores if s.cells)
        stats[size] = SizeStats(
            size=size,
            n=len(scores),
            success_rate=float(np.mean([s.result.success for s in scores])),
            hole_rate=float(np.mean([s.result.hole for s in scores])),
            invalid_rate=float(np.mean([s.result.invalid_moves > 0 for s in scores])),
            frame_accuracy=correct / frames if frames else math.nan,
            mean_steps=float(np.mean([s.result.steps for s in scores])),
        )
    return stats


def stats_table(stats: Mapping[int, SizeStats]) -> str:
    """Plain-text table of ``evaluate_plans`` output, one row per grid size."""
    lines = ["size      n  success  hole  invalid  frame_acc  steps"]
    for s in stats.values():
        lines.append(
            f"{s.size}x{s.size:<3} {s.n:>5}  {s.success_rate:7.3f}  {s.hole_rate:4.2f}  "
            f"{s.invalid_rate:7.3f}  {s.frame_accuracy:9.3f}  {s.mean_steps:5.1f}"
        )
    return "\n".join(lines)
