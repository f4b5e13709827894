"""FrozenLake maps in the style of the VSP benchmark, and BFS planning on them.

VSP (UCSB-NLP-Chang/Visual-Spatial-Planning, "maze" task) uses square FrozenLake grids of
3x3 to 8x8 whose start and goal can be anywhere, unlike gymnasium's ``generate_random_map``
which always puts S top-left and G bottom-right. A map here is FrozenLake's ``desc``: a list
of row strings over ``S`` (start), ``F`` (frozen), ``H`` (hole) and ``G`` (goal).

Moves follow gymnasium's ``FrozenLakeEnv`` with ``is_slippery=False``: actions are
0=LEFT, 1=DOWN, 2=RIGHT, 3=UP, a move into the border leaves the agent in place, and the
episode ends on entering H or G.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence

import numpy as np

LEFT, DOWN, RIGHT, UP = 0, 1, 2, 3
ACTION_NAMES = ("LEFT", "DOWN", "RIGHT", "UP")
# (row, col) displacement of each action, indexed by action id.
ACTION_DELTAS = ((0, -1), (1, 0), (0, 1), (-1, 0))
MIN_SIZE, MAX_SIZE = 3, 8
SPLITS = ("train", "heldout")
# One map in this many (by content hash) is reserved for the held-out split.
HELDOUT_BUCKETS = 4
# Per-map seeds: train uses [seed * _SEED_STRIDE, + _HELDOUT_OFFSET), held-out the next range.
_SEED_STRIDE = 10_000_000
_HELDOUT_OFFSET = _SEED_STRIDE // 2

Cell = tuple[int, int]


def check_size(size: int) -> int:
    """Return ``size`` if it is a VSP grid size (3..8), else raise ValueError."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an int in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be in {MIN_SIZE}..{MAX_SIZE} (VSP grid sizes), got {size}")
    return int(size)


def check_desc(desc: Sequence[str]) -> list[str]:
    """Validate a square FrozenLake ``desc`` with one S and one G; return it as a list of str."""
    rows = [str(row) for row in desc]
    check_size(len(rows))
    if any(len(row) != len(rows) for row in rows):
        raise ValueError(f"desc must be square, got row lengths {[len(r) for r in rows]}")
    text = "".join(rows)
    if set(text) - set("SFHG"):
        raise ValueError(f"desc may only contain S, F, H, G, got {sorted(set(text) - set('SFHG'))}")
    if text.count("S") != 1 or text.count("G") != 1:
        raise ValueError(f"desc needs exactly one S and one G, got {text.count('S')} and {text.count('G')}")
    return rows


def find_cell(desc: Sequence[str], tile: str) -> Cell:
    """(row, col) of the first ``tile`` character in ``desc``."""
    for r, row in enumerate(desc):
        c = row.find(tile)
        if c >= 0:
            return (r, c)
    raise ValueError(f"tile {tile!r} not in map")


def step_cell(desc: Sequence[str], cell: Cell, action: int) -> Cell:
    """Cell reached by ``action`` from ``cell`` (non-slippery FrozenLake; borders block)."""
    dr, dc = ACTION_DELTAS[action]
    n = len(desc)
    return (min(max(cell[0] + dr, 0), n - 1), min(max(cell[1] + dc, 0), n - 1))


def move_action(src: Cell, dst: Cell) -> int | None:
    """The action that moves ``src`` to the 4-neighbour ``dst``, or None if not a neighbour."""
    delta = (dst[0] - src[0], dst[1] - src[1])
    return ACTION_DELTAS.index(delta) if delta in ACTION_DELTAS else None


def _bfs(desc: Sequence[str], source: Cell) -> tuple[np.ndarray, dict[Cell, tuple[Cell, int]]]:
    """BFS over non-hole cells; neighbours in action order 0..3 (deterministic ties).

    Returns distances (-1 = unreachable) and, for each reached cell, (parent, action).
    G is terminal in FrozenLake, so it is reached but never expanded (unless it is the source).
    """
    n = len(desc)
    dist = np.full((n, n), -1, dtype=np.int64)
    parent: dict[Cell, tuple[Cell, int]] = {}
    dist[source] = 0
    queue = deque([source])
    while queue:
        cell = queue.popleft()
        if desc[cell[0]][cell[1]] == "G" and cell != source:
            continue
        for action in range(4):
            nxt = step_cell(desc, cell, action)
            if dist[nxt] >= 0 or desc[nxt[0]][nxt[1]] == "H":
                continue
            dist[nxt] = dist[cell] + 1
            parent[nxt] = (cell, action)
            queue.append(nxt)
    return dist, parent


def bfs_distances(desc: Sequence[str], source: Cell) -> np.ndarray:
    """(n, n) array of shortest move counts from ``source`` avoiding holes; -1 if unreachable."""
    return _bfs(desc, source)[0]


def shortest_path(desc: Sequence[str]) -> list[int] | None:
    """Shortest S->G action list by BFS (ties broken by action order), or None if unsolvable."""
    start, goal = find_cell(desc, "S"), find_cell(desc, "G")
    dist, parent = _bfs(desc, start)
    if dist[goal] < 0:
        return None
    actions: list[int] = []
    cell = goal
    while cell != start:
        cell, action = parent[cell]
        actions.append(action)
    return actions[::-1]


def path_cells(desc: Sequence[str], actions: Sequence[int]) -> list[Cell]:
    """Cells visited from S after each action, stopping when a hole or the goal is entered."""
    cell = find_cell(desc, "S")
    cells: list[Cell] = []
    for action in actions:
        cell = step_cell(desc, cell, int(action))
        cells.append(cell)
        if desc[cell[0]][cell[1]] in "HG":
            break
    return cells


def generate_map(size: int, seed: int, hole_prob: float = 0.2) -> list[str]:
    """Random solvable VSP-style map: start and goal at distinct random cells.

    Every other cell is a hole with probability ``hole_prob`` (0.2 matches the default frozen
    probability 0.8 of gymnasium's ``generate_random_map``). Draws are rejected and resampled
    until BFS finds a path, all from ``numpy.random.default_rng((seed, size))`` (so equal seeds
    give unrelated maps across sizes), and the map is a pure function of the arguments.
    """
    size = check_size(size)
    if not 0.0 <= hole_prob < 1.0:
        raise ValueError(f"hole_prob must be in [0, 1), got {hole_prob}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng((int(seed), size))
    while True:
        start, goal = rng.choice(size * size, size=2, replace=False)
        tiles = np.where(rng.random(size * size) < hole_prob, "H", "F")
        tiles[start], tiles[goal] = "S", "G"
        desc = ["".join(row) for row in tiles.reshape(size, size)]
        if shortest_path(desc) is not None:
            return desc


def map_split(desc: Sequence[str]) -> str:
    """The split a map belongs to, from a stable hash of its text (1 in HELDOUT_BUCKETS is held out).

    Assigning maps to splits by content makes train and held-out disjoint for every ``n`` and
    ``seed``, not only for one pair of generated sets.
    """
    digest = hashlib.blake2b("/".join(desc).encode(), digest_size=8).digest()
    return "heldout" if int.from_bytes(digest, "little") % HELDOUT_BUCKETS == 0 else "train"


def map_set(size: int, n: int, split: str = "train", seed: int = 0, hole_prob: float = 0.2) -> list[list[str]]:
    """``n`` distinct maps of one size for ``split`` ("train" or "heldout").

    Map ``i`` is tried with ``generate_map(size, base + i)``, where the seed ranges of the two
    splits are disjoint (``base = seed * 10**7`` for train, ``+ 5 * 10**6`` for held-out); maps
    whose content hash (``map_split``) names the other split, and duplicates, are skipped and
    the next seed is tried. Raises ValueError if ``n`` distinct maps cannot be found (possible
    for large ``n`` on 3x3 grids).
    """
    size = check_size(size)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base = seed * _SEED_STRIDE + (_HELDOUT_OFFSET if split == "heldout" else 0)
    maps: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for i in range(min(50 * n + 1000, _HELDOUT_OFFSET)):
        if len(maps) == n:
            break
        desc = generate_map(size, base + i, hole_prob)
        if tuple(desc) in seen or map_split(desc) != split:
            continue
        seen.add(tuple(desc))
        maps.append(desc)
    if len(maps) < n:
        raise ValueError(f"found only {len(maps)} distinct {size}x{size} {split} maps, n={n} requested")
    return maps
