"""FrozenLake visual-planning data and closed-loop evaluation (VSP benchmark, gymnasium 1.3.0).

- ``maps``: VSP-style random maps (3x3..8x8, random start and goal), BFS, train/held-out sets.
- ``frames``: frames identical to ``FrozenLake-v1``'s ``rgb_array`` rendering; datasets.
- ``replay``: agent detection in (predicted) frames, frames -> actions, env replay, metrics.
- ``baselines``: BFS oracle and random-walk plans.
"""

from .baselines import baseline_plans, oracle_plan, random_walk_limit, random_walk_plan
from .frames import (
    CELL_PX,
    build_dataset,
    cell_tiles,
    downsample,
    make_env,
    render_frame,
    to_unit_float,
    trajectory_frames,
)
from .maps import (
    ACTION_NAMES,
    DOWN,
    LEFT,
    RIGHT,
    UP,
    bfs_distances,
    check_desc,
    find_cell,
    generate_map,
    map_set,
    map_split,
    path_cells,
    shortest_path,
    step_cell,
)
from .replay import (
    Detection,
    FramePlan,
    InvalidMove,
    PlanScore,
    ReplayResult,
    SizeStats,
    detect_agents,
    evaluate_plans,
    frame_accuracy,
    frames_to_actions,
    replay,
    score_plan,
    stats_table,
)

__all__ = [
    "ACTION_NAMES",
    "CELL_PX",
    "DOWN",
    "LEFT",
    "RIGHT",
    "UP",
    "Detection",
    "FramePlan",
    "InvalidMove",
    "PlanScore",
    "ReplayResult",
    "SizeStats",
    "baseline_plans",
    "bfs_distances",
    "build_dataset",
    "cell_tiles",
    "check_desc",
    "detect_agents",
    "downsample",
    "evaluate_plans",
    "find_cell",
    "frame_accuracy",
    "frames_to_actions",
    "generate_map",
    "make_env",
    "map_set",
    "map_split",
    "oracle_plan",
    "path_cells",
    "random_walk_limit",
    "random_walk_plan",
    "render_frame",
    "replay",
    "score_plan",
    "shortest_path",
    "stats_table",
    "step_cell",
    "to_unit_float",
    "trajectory_frames",
]
