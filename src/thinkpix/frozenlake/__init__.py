"""FrozenLake visual-planning data and closed-loop evaluation (VSP benchmark, gymnasium 1.3.0).

- ``maps``: VSP-style random maps (3x3..8x8, random start and goal), BFS, train/held-out sets.
- ``frames``: frames identical to ``FrozenLake-v1``'s ``rgb_array`` rendering; datasets.
- ``replay``: agent detection in (predicted) frames, frames -> actions, env replay, metrics.
- ``baselines``: BFS oracle and random-walk plans.

Every name loads on first use (the command line's ``--help`` reads only the modules it needs).
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".baselines": ("baseline_plans", "oracle_plan", "random_walk_limit", "random_walk_plan"),
    ".frames": ("CELL_PX", "build_dataset", "cell_tiles", "downsample", "make_env", "render_frame", "to_unit_float",
        "trajectory_frames"),
    ".maps": ("ACTION_NAMES", "DOWN", "LEFT", "RIGHT", "UP", "bfs_distances", "check_desc", "find_cell", "generate_map",
        "map_set", "map_split", "path_cells", "shortest_path", "step_cell"),
    ".replay": ("Detection", "FramePlan", "InvalidMove", "PlanScore", "ReplayResult", "SizeStats", "detect_agents",
        "evaluate_plans", "frame_accuracy", "frames_to_actions", "replay", "score_plan", "stats_table"),
})
