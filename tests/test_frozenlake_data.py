"""FrozenLake data and closed-loop evaluation: maps, env-identical frames, detector, replay, baselines."""

from __future__ import annotations

import itertools
import os

import gymnasium
import numpy as np
import pytest

from thinkpix.frozenlake import (
    DOWN,
    LEFT,
    RIGHT,
    UP,
    baseline_plans,
    build_dataset,
    detect_agents,
    downsample,
    evaluate_plans,
    find_cell,
    frame_accuracy,
    frames_to_actions,
    generate_map,
    make_env,
    map_set,
    map_split,
    random_walk_plan,
    render_frame,
    replay,
    shortest_path,
    step_cell,
    to_unit_float,
    trajectory_frames,
)

SIZES = range(3, 9)
# S top-left, a wall of holes forcing a detour, G bottom-left: the only shortest path is R,R,D,D,L,L.
DETOUR = ["SFF", "HHF", "GFF"]
OPEN = ["SFF", "FFF", "FFG"]


def _reaches_goal(desc: list[str], actions: tuple[int, ...]) -> bool:
    cell = find_cell(desc, "S")
    for action in actions:
        cell = step_cell(desc, cell, action)
        if desc[cell[0]][cell[1]] in "HG":
            return desc[cell[0]][cell[1]] == "G"
    return False


def _cells(desc: list[str], plan: list[int]) -> list[tuple[int, int]]:
    cells, cell = [], find_cell(desc, "S")
    for action in plan:
        cell = step_cell(desc, cell, action)
        cells.append(cell)
    return cells


def _env_frames(desc: list[str], actions: list[int]) -> np.ndarray:
    """Reference frames straight from gymnasium (headless), independent of thinkpix.frozenlake.frames."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = gymnasium.make("FrozenLake-v1", desc=desc, is_slippery=False, render_mode="rgb_array")
    env.reset(seed=0)
    frames = [env.render()]
    for action in actions:
        env.step(action)
        frames.append(env.render())
    env.close()
    return np.stack(frames)


@pytest.mark.parametrize("size", SIZES)
def test_generated_maps_are_solvable_with_distinct_random_start_and_goal(size):
    starts, goals = set(), set()
    for seed in range(150):
        desc = generate_map(size, seed)
        assert len(desc) == size and all(len(row) == size for row in desc)
        text = "".join(desc)
        assert text.count("S") == 1 and text.count("G") == 1 and set(text) <= set("SFHG")
        assert shortest_path(desc) is not None
        starts.add(find_cell(desc, "S"))
        goals.add(find_cell(desc, "G"))
    assert generate_map(size, 7) == generate_map(size, 7)
    assert len(starts) > size and len(goals) > size  # not pinned to corners like generate_random_map


@pytest.mark.parametrize("bad", [2, 9, 0, "4"])
def test_bad_size_names_field_and_range(bad):
    with pytest.raises(ValueError, match=r"size.*3\.\.8"):
        generate_map(bad, 0)
    with pytest.raises(ValueError, match=r"size.*3\.\.8"):
        map_set(bad, 3)


@pytest.mark.parametrize("size", SIZES)
def test_train_and_heldout_sets_are_disjoint_and_distinct(size):
    n = 120 if size == 3 else 60
    train, heldout = map_set(size, n, "train"), map_set(size, n // 2, "heldout")
    train_keys, heldout_keys = {tuple(m) for m in train}, {tuple(m) for m in heldout}
    assert len(train_keys) == n and len(heldout_keys) == n // 2
    assert not train_keys & heldout_keys
    assert {map_split(m) for m in train} == {"train"} and {map_split(m) for m in heldout} == {"heldout"}
    assert map_set(size, 10, "train") == train[:10]
    assert not {tuple(m) for m in map_set(size, 30, "train", seed=1)} & heldout_keys


def test_map_set_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        map_set(4, 3, "test")


@pytest.mark.parametrize(
    ("desc", "length"),
    [(DETOUR, 6), (OPEN, 4), (["FFS", "FHF", "GFF"], 4), (["HFFF", "SHFF", "HFFF", "FFFG"], None)],
)
def test_bfs_path_is_minimal_on_hand_made_maps(desc, length):
    path = shortest_path(desc)
    if length is None:
        assert path is None
        assert not any(_reaches_goal(desc, seq) for k in range(1, 7) for seq in itertools.product(range(4), repeat=k))
        return
    assert len(path) == length and _reaches_goal(desc, tuple(path))
    assert not any(_reaches_goal(desc, seq) for seq in itertools.product(range(4), repeat=length - 1))
    assert replay(desc, path).success


def test_bfs_tie_breaking_is_deterministic():
    assert shortest_path(DETOUR) == [RIGHT, RIGHT, DOWN, DOWN, LEFT, LEFT]
    assert shortest_path(OPEN) == [DOWN, DOWN, RIGHT, RIGHT]


@pytest.mark.parametrize("size", SIZES)
def test_frames_equal_env_rendering(size):
    desc = map_set(size, 1, "heldout", seed=3)[0]
    plan = shortest_path(desc)
    start = find_cell(desc, "S")
    bumps = [a for a in (UP, LEFT, RIGHT) if step_cell(desc, start, a) == start]
    actions = bumps[:1] + plan  # a border bump first: same cell, new elf pose
    ours = trajectory_frames(desc, actions)
    np.testing.assert_array_equal(ours, _env_frames(desc, actions))
    assert ours.shape == (len(actions) + 1, 64 * size, 64 * size, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(trajectory_frames(desc, actions, cell_px=16), downsample(ours, 4))


def test_frames_of_hole_and_goal_and_poses_equal_env():
    desc = ["SFH", "FFF", "HFG"]
    for actions in ([RIGHT, RIGHT], [DOWN, DOWN], [UP, LEFT, RIGHT, DOWN, DOWN, RIGHT]):
        np.testing.assert_array_equal(trajectory_frames(desc, actions), _env_frames(desc, actions))
    env = make_env(desc, render_mode="rgb_array")
    env.reset(seed=0)
    for state, action in [(4, LEFT), (4, UP), (7, RIGHT), (8, DOWN)]:
        env.unwrapped.s, env.unwrapped.lastaction = state, action
        np.testing.assert_array_equal(render_frame(desc, divmod(state, 3), action), env.render())
    env.close()
    with pytest.raises(ValueError, match="after the episode ended"):
        trajectory_frames(desc, [RIGHT, RIGHT, DOWN])


@pytest.mark.parametrize("cell_px", [64, 16, 8])
def test_detector_recovers_agent_on_real_frames(cell_px):
    for size in SIZES:
        for desc in map_set(size, 2, "heldout"):
            plan = shortest_path(desc)
            frames = trajectory_frames(desc, plan, cell_px)
            truth = [find_cell(desc, "S"), *_cells(desc, plan)]
            detections = detect_agents(desc, frames)
            assert [d.cell for d in detections] == truth
            assert min(d.confidence for d in detections) > 0.9


@pytest.mark.parametrize("cell_px", [64, 16])
def test_detector_recovers_agent_on_noisy_frames(cell_px):
    rng = np.random.default_rng(0)
    for size in (3, 5, 8):
        for desc in map_set(size, 3, "train"):
            plan = shortest_path(desc)
            frames = trajectory_frames(desc, plan, cell_px)
            noisy = np.clip(frames / 255.0 + rng.normal(0, 0.2, frames.shape), 0, 1)
            faded = (0.6 * frames + 0.4 * frames[:1]) / 255.0  # a weak second agent left at S
            assert [d.cell for d in detect_agents(desc, noisy)] == [find_cell(desc, "S"), *_cells(desc, plan)]
            assert [d.cell for d in detect_agents(desc, faded)][1:] == _cells(desc, plan)


def test_detector_confidence_drops_for_two_agents_and_rejects_bad_ranges():
    frames = trajectory_frames(OPEN, [RIGHT, RIGHT]) / 255.0
    ghost = detect_agents(OPEN, (frames[:1] + frames[2:]) / 2)[0]
    assert ghost.confidence < 0.5 < detect_agents(OPEN, frames[:1])[0].confidence
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_unit_float(frames * 2 - 1)
    with pytest.raises(ValueError, match="channel-last"):
        detect_agents(OPEN, frames.transpose(0, 3, 1, 2))


def test_replay_scores_hand_made_plans():
    good = replay(DETOUR, [RIGHT, RIGHT, DOWN, DOWN, LEFT, LEFT])
    assert good.success and not good.hole and good.steps == 6 and good.invalid_moves == 0
    hole = replay(DETOUR, [DOWN, DOWN])
    assert hole.hole and not hole.success and hole.steps == 1 and hole.cells == ((1, 0),)
    short = replay(DETOUR, [RIGHT])
    assert not short.success and not short.hole
    assert replay(DETOUR, [UP] * 150).truncated  # FrozenLake-v1's 100-step TimeLimit, as in VSP
    with pytest.raises(ValueError, match="0..3"):
        replay(DETOUR, [4])


def test_frames_to_actions_flags_diagonal_and_jump_and_skips_stays():
    plan = [RIGHT, RIGHT, DOWN, DOWN, LEFT, LEFT]
    frames = trajectory_frames(DETOUR, plan, cell_px=16)[1:]
    decoded = frames_to_actions(DETOUR, np.concatenate([frames[:1], frames[:1], frames[1:], frames[-1:]]))
    assert decoded.actions == tuple(plan) and decoded.stays == 1 and not decoded.invalid_moves
    assert replay(DETOUR, decoded).success
    # (0,1) -> (1,2) skips (0,2): a diagonal; then (1,2) -> (2,0) is a two-cell jump onto the goal.
    diagonal = frames_to_actions(DETOUR, np.stack([frames[0], frames[2], frames[5]]))
    assert [m.kind for m in diagonal.invalid_moves] == ["diagonal", "jump"]
    assert diagonal.actions == (RIGHT,) and diagonal.invalid_moves[0].index == 1
    result = replay(DETOUR, diagonal)
    assert not result.success and result.invalid_moves == 2
    stats = evaluate_plans([DETOUR, DETOUR], [frames, np.stack([frames[0], frames[2], frames[5]])])[3]
    assert stats.success_rate == 0.5 and stats.invalid_rate == 0.5 and stats.hole_rate == 0.0


def test_frame_accuracy_accepts_any_shortest_path():
    assert frame_accuracy(OPEN, [(0, 1), (0, 2), (1, 2), (2, 2)]) == 1.0
    assert frame_accuracy(OPEN, [(1, 0), (1, 1), (2, 1), (2, 2), (2, 2)]) == 1.0
    assert frame_accuracy(OPEN, [(1, 0), (0, 0), (0, 1), (0, 2)]) == 0.25
    frames = trajectory_frames(OPEN, [RIGHT, DOWN, RIGHT, DOWN], cell_px=16)[1:]
    assert evaluate_plans([OPEN], [frames])[3].frame_accuracy == 1.0


def test_oracle_solves_everything_and_random_walk_much_less():
    maps = [desc for size in SIZES for desc in map_set(size, 25, "heldout")]
    oracle = evaluate_plans(maps, baseline_plans("oracle", maps))
    random = evaluate_plans(maps, baseline_plans("random", maps, seed=0))
    assert set(oracle) == set(SIZES)
    for size in SIZES:
        assert oracle[size].success_rate == 1.0 and oracle[size].frame_accuracy == 1.0
        assert oracle[size].hole_rate == 0.0 and oracle[size].invalid_rate == 0.0
        assert random[size].success_rate <= 0.6
    assert np.mean([random[s].success_rate for s in SIZES]) < 0.4
    assert baseline_plans("random", maps[:5], seed=1) == baseline_plans("random", maps[:5], seed=1)
    assert len(random_walk_plan(OPEN, 0, max_steps=3)) <= 3
    actions = np.concatenate(
        [random_walk_plan(["SFFF", "FFFF", "FFFF", "FFFG"], seed, max_steps=20) for seed in range(50)]
    )
    assert np.bincount(actions, minlength=4).min() > 0.15 * len(actions)  # uniform over the 4 actions


def test_build_dataset_shapes_padding_and_consistency():
    data = build_dataset(4, 12, "train", seed=0, cell_px=8)
    n, horizon = data["actions"].shape
    assert n == 12 and data["frames"].shape == (12, horizon + 1, 32, 32, 3)
    assert data["frames"].dtype == np.uint8 and data["lengths"].max() == horizon
    for i in range(n):
        desc, steps = list(data["maps"][i]), int(data["lengths"][i])
        plan = [int(a) for a in data["actions"][i, :steps]]
        assert plan == shortest_path(desc) and (data["actions"][i, steps:] == -1).all()
        np.testing.assert_array_equal(data["frames"][i, : steps + 1], trajectory_frames(desc, plan, cell_px=8))
        assert (data["frames"][i, steps:] == data["frames"][i, steps]).all()
        assert tuple(data["cells"][i, -1]) == find_cell(desc, "G")
        assert [d.cell for d in detect_agents(desc, data["frames"][i])] == [tuple(c) for c in data["cells"][i]]
