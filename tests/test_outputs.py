"""Outputs a person can judge: labelled, upscaled grids with scorer marks; sampled images that record their
prompt, seed and model; FrozenLake strips with step numbers; printed routing-collapse warnings."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from test_frozenlake_model import tiny as tiny_planner
from test_shapes_pipelines import TINY, pretend_trained
from thinkpix import RSRConfig, apply_rsr, rsr_layers, save_rsr
from thinkpix.analysis.routing import collapse_warnings
from thinkpix.cli import build_parser, main
from thinkpix.eval.geneval import geneval_grid
from thinkpix.frozenlake import map_set
from thinkpix.frozenlake.evaluate import save_strip, strip
from thinkpix.images import (
    MARK_COLORS,
    MIN_TILE_PX,
    make_labelled_grid,
    save_png,
    upscale_factor,
    wrap_caption,
)
from thinkpix.sampling import load_target
from thinkpix.shapes.pipeline_t2i import ShapesTextToImagePipeline
from thinkpix.shapes.prompts import evaluation_metadata, scene_for_metadata
from thinkpix.shapes.render import render_scene

WHITE = np.array([255, 255, 255])


def tiles(n=3, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_labelled_grid_upscales_nearest_neighbour_and_writes_a_caption_under_each_tile():
    images = tiles()
    grid = make_labelled_grid(images, ["a photo of a red circle", "two squares", "x"], ncols=3, pad=6)
    scale = upscale_factor(32)
    assert scale * 32 >= MIN_TILE_PX and scale == 4
    first = grid[6 : 6 + 128, 6 : 6 + 128]
    assert np.array_equal(first, images[0].repeat(4, 0).repeat(4, 1))  # crisp: every pixel a 4x4 block
    caption = grid[6 + 128 : 6 + 128 + 16, 6 : 6 + 128]
    assert (caption != WHITE).any(axis=-1).sum() > 20  # text drawn below the tile
    unlabelled = make_labelled_grid(images, ["", "", ""], ncols=3, pad=6)
    assert not (unlabelled[6 + 128 : 6 + 128 + 16, 6 : 6 + 128] != WHITE).any()
    with pytest.raises(ValueError, match="labels"):
        make_labelled_grid(images, ["only one"])


def test_marks_frame_tiles_green_or_red_and_leave_unscored_tiles_plain():
    grid = make_labelled_grid(tiles(), ["a", "b", "c"], ncols=3, marks=[True, False, None], pad=6)
    frame_row = grid[4]  # the 3-pixel frame sits just above each 128-px tile
    cell = 128 + 6
    assert tuple(frame_row[6 + 64]) == MARK_COLORS[True]
    assert tuple(frame_row[6 + cell + 64]) == MARK_COLORS[False]
    assert tuple(frame_row[6 + 2 * cell + 64]) == (255, 255, 255)


def test_captions_wrap_to_the_tile_and_cut_long_prompts_with_an_ellipsis():
    from PIL import ImageFont

    font = ImageFont.load_default(size=11)
    lines = wrap_caption("a photo of a red circle left of a blue square", font, 128)
    assert len(lines) > 1 and all(font.getlength(line) <= 128 for line in lines)
    long = wrap_caption(" ".join(["word"] * 80), font, 128, max_lines=3)
    assert len(long) == 3 and long[-1].endswith("...")


def test_png_text_chunks_round_trip(tmp_path):
    save_png(tiles(1)[0], tmp_path / "a.png", {"prompt": "two cats", "seed": 7, "rsr": None, "interval": [0, 0.8]})
    with Image.open(tmp_path / "a.png") as image:
        assert image.text == {"prompt": "two cats", "seed": "7", "interval": "[0, 0.8]"}


@pytest.fixture(scope="module")
def tiny_t2i(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    pipe = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, **TINY)
    pretend_trained(pipe.transformer)
    pipe.save_pretrained(root / "pipe")
    return root / "pipe"


def test_sample_records_prompt_seed_and_model_for_every_image(tiny_t2i, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--model", str(tiny_t2i), "--prompt", "a photo of a red circle", "--prompt",
                 "a photo of two blue squares", "--num-images", "2", "--seed", "5", "--num-inference-steps", "2",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("grid.png")
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in records] == ["00000-0.png", "00000-1.png", "00001-0.png", "00001-1.png"]
    assert [r["seed"] for r in records] == [5, 6, 7, 8]
    assert records[2]["prompt"] == "a photo of two blue squares" and records[2]["model"] == str(tiny_t2i)
    assert records[0]["num_inference_steps"] == 2 and records[0]["guidance_scale"] == 4.0
    with Image.open(out / "00001-1.png") as image:
        assert image.text["prompt"] == "a photo of two blue squares" and image.text["seed"] == "8"
        assert image.text["model"] == str(tiny_t2i)
        drawn = np.asarray(image.convert("RGB"))
    # each image has its own generator: its recorded seed redraws it alone
    target = load_target(tiny_t2i)
    alone = target.sample(["a photo of two blue squares"], seed=[8], steps=2)
    assert np.abs((alone[0] * 255).round() - drawn.astype(float)).max() <= 1
    with Image.open(out / "grid.png") as grid:
        assert grid.width >= 2 * MIN_TILE_PX and grid.height > 2 * MIN_TILE_PX  # upscaled, captions below


def test_sampling_accepts_a_compiled_transformer_as_diffusers_users_install_it(tiny_t2i):
    target = load_target(tiny_t2i)
    eager = target.sample(["a photo of a red circle"], seed=[3], steps=1)
    transformer = target.pipeline.transformer
    target.pipeline.transformer = torch.compile(transformer, fullgraph=True, backend="aot_eager")
    assert target.transformer is transformer and target.kind == "caption"
    compiled = target.sample(["a photo of a red circle"], seed=[3], steps=1)
    np.testing.assert_allclose(compiled[0], eager[0], atol=1e-5)


def test_sample_seed_list_must_match_the_conditions(tiny_t2i):
    with pytest.raises(ValueError, match="2 seeds for 1 conditions"):
        load_target(tiny_t2i).sample(["a photo of a red circle"], seed=[1, 2], steps=1)


def test_geneval_grid_labels_every_prompt_and_marks_the_scorer_verdict(tmp_path):
    records = evaluation_metadata()[:3]
    for i, record in enumerate(records):
        folder = tmp_path / f"{i:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps(record) + "\n")
        rendered = render_scene(scene_for_metadata(record, np.random.default_rng(i)))
        image = rendered if i != 1 else np.zeros_like(rendered)  # prompt 1 gets an empty image: it fails
        Image.fromarray(image).save(folder / "samples" / "00000.png")
    path, shown = geneval_grid(tmp_path, tmp_path / "grid.png", ncols=3)
    assert shown == 3
    grid = np.asarray(Image.open(path).convert("RGB"))
    cell = 128 + 6
    assert tuple(grid[4, 6 + cell + 64]) == MARK_COLORS[False]
    assert tuple(grid[4, 6 + 64]) == MARK_COLORS[True]


def test_frozenlake_strip_png_has_a_step_header_and_row_names(tmp_path):
    model = tiny_planner()
    desc = map_set(3, 1, "heldout")[0]
    raw, _ = strip(model, desc)
    save_strip(model, desc, tmp_path / "s.png", scale=4)
    saved = np.asarray(Image.open(tmp_path / "s.png").convert("RGB"))
    assert saved.shape[0] > raw.shape[0] * 4 and saved.shape[1] > raw.shape[1] * 4
    header = saved[: saved.shape[0] - raw.shape[0] * 4]
    assert (header != WHITE).any(axis=-1).sum() > 20  # the step numbers


def collapsed_rsr(root):
    pipe = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=32, head_dim=16, num_layers=2)
    pretend_trained(pipe.transformer)
    pipe.save_pretrained(root / "pipe")
    apply_rsr(pipe.transformer, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(1,)))
    for proc in rsr_layers(pipe.transformer).values():
        with torch.no_grad():
            proc.rsr.gate.proj.bias.copy_(torch.tensor([-50.0, 50.0]))  # every token takes expert 1
    save_rsr(pipe.transformer, root / "rsr")


def test_analyze_routing_prints_the_collapse_warning(tmp_path, capsys):
    collapsed_rsr(tmp_path)
    assert main(["analyze", "routing", "--model", str(tmp_path / "pipe"), "--rsr", str(tmp_path / "rsr"),
                 "--prompts", "a photo of a red circle", "--num-inference-steps", "2", "--out",
                 str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert warning == ["thinkpix analyze routing: warning: layer 1: expert 1 takes 100.0% of the routing decisions "
                       "(more than 90%): the gate has collapsed"]
    assert json.loads(captured.out)["collapse_warnings"] == [warning[0].split("warning: ")[1]]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert collapse_warnings(summary) == json.loads(captured.out)["collapse_warnings"]
    # --rsr given the fine-tuning output folder instead of its rsr/ sub-folder: the error points at it
    assert main(["sample", "--model", str(tmp_path / "pipe"), "--rsr", str(tmp_path), "--prompt",
                 "a photo of a red circle", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("thinkpix sample: error:") and f"did you mean {tmp_path / 'rsr'}?" in err


def test_train_extractor_default_out_leaves_the_shipped_asset_alone():
    out = build_parser().parse_args(["eval", "train-extractor"]).out
    assert "assets" not in out and out.startswith("runs/")
