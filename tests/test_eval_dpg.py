"""Shapes-DPG: held-out prompt split, the self-describing folder layout, scoring and the CLI."""

import json

import numpy as np
import pytest
from PIL import Image

from thinkpix.cli import main
from thinkpix.eval.dpg import dpg_bindings, dpg_prompts, generate_dpg, score_dpg_folder
from thinkpix.shapes import ShapesTextToImagePipeline, render_scene, scene_for_item
from thinkpix.shapes.dpg import DpgItem
from thinkpix.shapes.prompts import HELDOUT_BINDINGS
from thinkpix.train import TrainTarget


def write_ground_truth(folder, items, samples=2, seed=0, shift=0):
    """The layout of ``generate dpg`` with renders of ``items[(i + shift) % n]`` for prompt ``i``."""
    rng = np.random.default_rng(seed)
    for i, item in enumerate(items):
        (folder / f"{i:05d}" / "samples").mkdir(parents=True)
        (folder / f"{i:05d}" / "item.json").write_text(json.dumps(item.to_dict()))
        drawn = items[(i + shift) % len(items)]
        for n in range(samples):
            Image.fromarray(render_scene(scene_for_item(drawn, rng))).save(folder / f"{i:05d}/samples/{n:05d}.png")


def test_split_prompts_are_distinct_seeded_and_held_out():
    held_out = dpg_prompts(60, split="eval", seed=0)
    train = dpg_prompts(60, split="train", seed=0)
    assert all(dpg_bindings(item) & HELDOUT_BINDINGS for item in held_out)
    assert not any(dpg_bindings(item) & HELDOUT_BINDINGS for item in train)
    assert len({item.prompt for item in held_out}) == 60
    assert [i.prompt for i in dpg_prompts(60, split="eval", seed=0)] == [i.prompt for i in held_out]
    assert [i.prompt for i in dpg_prompts(10, split="all", seed=1)] != [i.prompt for i in held_out[:10]]
    with pytest.raises(ValueError, match="split"):
        dpg_prompts(3, split="test")


def test_ground_truth_renders_score_at_least_99_and_the_cli_prints_every_category(tmp_path, capsys):
    items = dpg_prompts(40, seed=0)
    write_ground_truth(tmp_path / "gt", items)
    scores, results = score_dpg_folder(tmp_path / "gt")
    assert len(results) == 80 and scores["overall"] >= 0.99
    assert set(scores) == {"overall", "entity", "attribute", "relation", "global", "other"}
    assert main(["eval", "dpg", str(tmp_path / "gt"), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("overall", "entity", "attribute", "relation", "global", "other"))
    assert json.loads((tmp_path / "s.json").read_text())["scores"] == scores


def test_renders_of_other_prompts_score_much_lower(tmp_path):
    items = dpg_prompts(40, seed=0)
    write_ground_truth(tmp_path, items, shift=1)  # every image answers the next prompt
    scores, _ = score_dpg_folder(tmp_path)
    assert scores["overall"] < 0.6 and scores["attribute"] < 0.6


def test_generate_dpg_writes_a_self_describing_folder(tmp_path, capsys):
    pipe = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=32, head_dim=16, num_layers=2)
    items = dpg_prompts(2, seed=0)
    generate_dpg(TrainTarget(pipe), items, tmp_path / "fn", samples=2, steps=1, progress=False)
    for i, item in enumerate(items):
        assert DpgItem.from_dict(json.loads((tmp_path / f"fn/{i:05d}/item.json").read_text())) == item
        assert sorted(p.name for p in (tmp_path / f"fn/{i:05d}/samples").iterdir()) == ["00000.png", "00001.png"]
    assert json.loads((tmp_path / "fn/config.json").read_text())["samples"] == 2
    pipe.save_pretrained(tmp_path / "pipe")
    assert main(["generate", "dpg", "--model", str(tmp_path / "pipe"), "--out", str(tmp_path / "cli"),
                 "--num-prompts", "2", "--samples", "1", "--num-inference-steps", "1"]) == 0
    config = json.loads((tmp_path / "cli/config.json").read_text())
    assert config["split"] == "eval" and config["prompts"] == 2 and config["model"] == str(tmp_path / "pipe")
    assert main(["eval", "dpg", str(tmp_path / "cli")]) == 0
    assert main(["eval", "dpg", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
