"""The detector reads what small models draw and refuses what is not a world shape (each case failed before)."""

import numpy as np
import pytest

from thinkpix.shapes.detect import UNKNOWN_COLOR, detect_shapes
from thinkpix.shapes.perturb import OFF_PALETTE, ROBUSTNESS, Drawn, draw, finish, make_case
from thinkpix.shapes.prompts import colors_metadata, counting_metadata, single_object_metadata
from thinkpix.shapes.render import render_scene
from thinkpix.shapes.scene import COLORS, Scene, ShapeObject
from thinkpix.shapes.score import evaluate


def image_of(*objects, antialias=False):
    return finish(draw(list(objects), 32, np.random.default_rng(0), antialias=antialias), "clean",
                  np.random.default_rng(0))


def red(shape, cx, cy, extent, **kw):
    return Drawn(shape, COLORS["red"], "red", cx, cy, extent, **kw)


def shapes_found(image):
    return sorted((d.shape, d.color) for d in detect_shapes(image).detections)


def test_a_bar_is_no_square_and_an_ellipse_no_circle():
    assert shapes_found(image_of(red("bar", 16, 16, 8, aspect=0.5))) == []
    assert shapes_found(image_of(red("ellipse", 16, 16, 12, aspect=2.0))) == []
    assert not evaluate(detect_shapes(image_of(red("bar", 16, 16, 8, aspect=0.5))), single_object_metadata("square"))[0]


def test_a_speck_is_no_circle():
    result = detect_shapes(image_of(red("circle", 16, 16, 3.5, is_object=False)))
    assert result.detections == () and result.stray_pixels > 0


def test_tilted_and_antialiased_shapes_keep_their_class():
    for shape in ("square", "triangle", "diamond", "circle"):
        for angle in (-9.0, 8.0):
            image = image_of(red(shape, 16.3, 15.7, 12, angle=angle), antialias=True)
            assert shapes_found(image) == [(shape, "red")], (shape, angle)


def test_an_off_palette_object_counts_with_unknown_colour():
    purple = Drawn("circle", OFF_PALETTE["purple"], UNKNOWN_COLOR, 24, 24, 8)
    image = image_of(red("circle", 6, 6, 8), red("circle", 18, 6, 8), purple)
    assert ("circle", UNKNOWN_COLOR) in shapes_found(image)
    assert not evaluate(detect_shapes(image), counting_metadata("circle", 2))[0]  # three circles now
    assert evaluate(detect_shapes(image), counting_metadata("circle", 3))[0]


def test_touching_circles_of_one_colour_are_split():
    image = image_of(red("circle", 10, 16, 10), red("circle", 20, 16, 10))
    assert shapes_found(image) == [("circle", "red"), ("circle", "red")]
    assert evaluate(detect_shapes(image), counting_metadata("circle", 2))[0]


def test_half_a_diamond_cut_by_the_border_is_no_triangle():
    image = image_of(red("diamond", 16, 32, 12))
    assert shapes_found(image) == []


def test_colour_ties_do_not_depend_on_where_objects_were_drawn():
    for first, second in (("red", "blue"), ("blue", "red")):
        scene = Scene((ShapeObject("square", first, "small", 2, 2, 8),
                       ShapeObject("square", second, "small", 20, 20, 8)))
        found = detect_shapes(render_scene(scene))
        assert evaluate(found, colors_metadata("blue", "square"))[0]
        assert evaluate(found, colors_metadata("red", "square"))[0]
        assert not evaluate(found, colors_metadata("green", "square"))[0]


@pytest.mark.parametrize("family", [f for f in ROBUSTNESS if f not in ("heavy wobble", "model-like")]
                         + ["bar", "speck", "off-palette", "same-colour touching"])
def test_each_family_is_accepted_when_correct_and_refused_when_corrupted(family):
    rng = np.random.default_rng(1)
    verdicts = {True: [], False: []}
    for index in range(20):
        for corrupted in (False, True):
            case = make_case(family, index, corrupted, rng)
            verdicts[case.truth].append(evaluate(detect_shapes(case.image), case.metadata)[0])
    assert np.mean(verdicts[True]) >= 0.95
    assert np.mean(verdicts[False]) <= 0.05 if verdicts[False] else True
