"""Reference planners for FrozenLake, scored with the same ``replay.evaluate_plans``.

- ``oracle_plan``: the BFS shortest path (always succeeds on a solvable map).
- ``random_walk_plan``: uniformly random actions (like sampling ``env.action_space``) until
  the walk enters a hole or the goal, or after ``max_steps``. The default limit is
  ``min(2 * size**2, 100)``: twice the number of cells, capped at the 100-step ``TimeLimit``
  that ``gymnasium.make("FrozenLake-v1")`` adds and VSP's evaluator therefore replays under.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .maps import check_desc, find_cell, shortest_path, step_cell

TIME_LIMIT = 100  # max_episode_steps of gymnasium's FrozenLake-v1 registration
POLICIES = ("oracle", "random")


def random_walk_limit(size: int) -> int:
    """Default random-walk length: ``min(2 * size**2, TIME_LIMIT)``."""
    return min(2 * size * size, TIME_LIMIT)


def oracle_plan(desc: Sequence[str]) -> list[int]:
    """BFS shortest S->G actions; raises ValueError if the map is unsolvable."""
    plan = shortest_path(check_desc(desc))
    if plan is None:
        raise ValueError(f"map has no path from S to G: {list(desc)}")
    return plan


def random_walk_plan(desc: Sequence[str], rng: np.random.Generator | int, max_steps: int | None = None) -> list[int]:
    """Uniform random actions from S until a hole or the goal is entered or ``max_steps`` pass.

    ``rng`` is a numpy Generator or a seed for ``numpy.random.default_rng``; moves into the
    border are kept (they leave the agent in place, as in the env).
    """
    desc = check_desc(desc)
    rng = np.random.default_rng(rng)
    limit = random_walk_limit(len(desc)) if max_steps is None else max_steps
    cell = find_cell(desc, "S")
    actions: list[int] = []
    while len(actions) < limit and desc[cell[0]][cell[1]] not in "HG":
        action = int(rng.integers(4))
        actions.append(action)
        cell = step_cell(desc, cell, action)
    return actions


def baseline_plans(policy: str, maps: Sequence[Sequence[str]], seed: int = 0) -> list[list[int]]:
    """Plans of ``policy`` ("oracle" or "random") for each map; map i's walk uses seed ``(seed, i)``."""
    if policy == "oracle":
        return [oracle_plan(desc) for desc in maps]
    if policy == "random":
        return [random_walk_plan(desc, np.random.default_rng((seed, i))) for i, desc in enumerate(maps)]
    raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
