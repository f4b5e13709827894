"""Training-set recipes: the compositional fine-tuning set never shows a held-out binding."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from thinkpix.cli import main as cli_main
from thinkpix.shapes.dataset import make_dataset
from thinkpix.shapes.detect import detect_shapes
from thinkpix.shapes.prompts import HELDOUT_BINDINGS, bindings, training_metadata, training_samples
from thinkpix.shapes.recipes import COMPOSITIONAL_TAGS, depicted_bindings, recipe_samples
from thinkpix.shapes.scene import ShapeObject


def test_depicted_bindings_sees_facts_no_prompt_states():
    # a circle up-left of a square: both "circle left of square" and "circle above square" hold under GenEval's rule
    circle, square = ShapeObject("circle", "red", "small", 2, 2, 8), ShapeObject("square", "red", "small", 20, 20, 8)
    found = depicted_bindings([circle, square])
    assert {("position", "circle", "left of", "square"), ("position", "circle", "above", "square")} <= found
    assert {("color", "red", "circle"), ("color", "red", "square")} <= found
    below = ShapeObject("circle", "red", "small", 20, 2, 8), ShapeObject("circle", "red", "small", 20, 20, 8)
    assert ("count", "circle", 2) in depicted_bindings(below)
    assert not any(b[0] == "position" for b in depicted_bindings(below))  # same shape: no fact between shapes


def test_pretrain_recipe_is_the_old_training_stream_and_shows_held_out_facts():
    old, new = list(training_samples(seed=4, n=300)), list(recipe_samples("pretrain", seed=4, n=300))
    assert [(s.prompt, s.scene) for s in old] == [(s.prompt, s.scene) for s in new]
    leaked = [s for s in old if depicted_bindings(s.scene.objects) & HELDOUT_BINDINGS]
    assert leaked, "the pretraining stream is expected to show unstated held-out facts (which the recipe removes)"
    assert all(not bindings(s.metadata) & HELDOUT_BINDINGS for s in old)  # ... although it never states one


def test_compositional_recipe_draws_training_prompts_of_four_tags_and_clean_scenes():
    samples = list(recipe_samples("compositional", seed=4, n=600))
    training_prompts = {meta["prompt"] for meta in training_metadata()}
    tags = Counter(s.metadata["tag"] for s in samples)
    assert set(tags) == set(COMPOSITIONAL_TAGS) and min(tags.values()) > 100  # about 150 each
    for sample in samples:
        assert sample.prompt in training_prompts
        assert not depicted_bindings(sample.scene.objects) & HELDOUT_BINDINGS, sample.prompt
    again = list(recipe_samples("compositional", seed=4, n=20))
    assert [(s.prompt, s.scene) for s in again] == [(s.prompt, s.scene) for s in samples[:20]]


def test_compositional_images_show_no_held_out_binding_to_the_detector(tmp_path):
    """Read back from the PNGs on disk, not from the scenes that drew them."""
    out = make_dataset(tmp_path / "ft", n=160, seed=0, recipe="compositional")
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 160
    for line in lines:
        detections = detect_shapes(np.asarray(Image.open(out / line["file_name"]).convert("RGB"))).detections
        assert detections and not depicted_bindings(detections) & HELDOUT_BINDINGS, line


def test_objects_recipe_draws_one_object_a_scene_from_single_object_and_colors_prompts():
    samples = list(recipe_samples("objects", seed=3, n=200))
    training_prompts = {meta["prompt"] for meta in training_metadata()}
    tags = Counter(s.metadata["tag"] for s in samples)
    assert set(tags) == {"single_object", "colors"} and min(tags.values()) > 70
    assert all(len(s.scene.objects) == 1 and s.prompt in training_prompts for s in samples)


def test_objects_pairs_recipe_adds_clean_two_object_scenes_and_nothing_compositional_beyond():
    samples = list(recipe_samples("objects-pairs", seed=3, n=300))
    tags = Counter(s.metadata["tag"] for s in samples)
    assert set(tags) == {"single_object", "colors", "two_object"} and min(tags.values()) > 70
    assert all(len(s.scene.objects) == (2 if s.metadata["tag"] == "two_object" else 1) for s in samples)
    assert not any(depicted_bindings(s.scene.objects) & HELDOUT_BINDINGS for s in samples)


def test_recipe_errors_name_the_field_and_the_allowed_values(tmp_path):
    allowed = "allowed values: pretrain, compositional, objects, objects-pairs"
    with pytest.raises(ValueError, match=f"recipe='nope' is not allowed; {allowed}"):
        make_dataset(tmp_path / "a", n=2, seed=0, recipe="nope")
    with pytest.raises(ValueError, match="recipe='compositional' draws captioned training sets only"):
        make_dataset(tmp_path / "b", n=2, seed=0, variant="class", recipe="compositional")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_make_dataset_recipe(tmp_path, capsys):
    assert cli_main(["shapes", "make-dataset", "--out", str(tmp_path / "ft"), "--n", "8",
                     "--recipe", "compositional"]) == 0
    assert "compositional recipe" in capsys.readouterr().out
    prompts = [json.loads(line)["text"] for line in (tmp_path / "ft" / "metadata.jsonl").read_text().splitlines()]
    tags = {m["prompt"]: m["tag"] for m in training_metadata()}
    assert len(prompts) == 8 and {tags[p] for p in prompts} <= set(COMPOSITIONAL_TAGS)
