"""The detector reads what small models draw and refuses what is not a world shape (each case failed before)."""

import io

import numpy as np
import pytest
from PIL import Image

from thinkpix.shapes.detect import UNKNOWN_COLOR, detect_shapes
from thinkpix.shapes.perturb import (
    FALSIFIED_BY_OFF_PALETTE,
    OFF_PALETTE,
    ROBUSTNESS,
    SPECK_AREA,
    Drawn,
    coverage,
    draw,
    finish,
    make_case,
    speck_of,
)
from thinkpix.shapes.prompts import colors_metadata, counting_metadata, single_object_metadata
from thinkpix.shapes.render import render_scene, shape_mask
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


@pytest.mark.parametrize("family", [f for f in ROBUSTNESS if f != "heavy wobble"]
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


def jpeg(image, quality=70):
    """JPEG round trip with 4:2:0 chroma subsampling."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=2)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_small_blue_shapes_keep_their_outline_through_jpeg_chroma_subsampling():
    # blue is nearly all chroma, which 4:2:0 halves: its brightest channel smears, its luma stays sharp
    for shape in ("triangle", "circle", "square", "diamond"):
        for cx, cy in ((8, 8), (16.5, 12), (23, 22.5), (11, 24)):
            image = jpeg(image_of(Drawn(shape, COLORS["blue"], "blue", cx, cy, 8)))
            assert shapes_found(image) == [(shape, "blue")], (shape, cx, cy)


def mask_image(mask, color="green"):
    image = np.zeros((*mask.shape, 3), dtype=np.uint8)
    image[mask] = COLORS[color]
    return image


def test_a_small_circle_with_lumps_at_its_four_tips_is_no_diamond():
    mask = np.zeros((32, 32), dtype=bool)
    mask[12:20, 12:20] = shape_mask("circle", 8, 8)
    for y, x in ((11, 15), (20, 16), (15, 11), (16, 20)):
        mask[y, x] = True
    assert shapes_found(mask_image(mask)) == [("circle", "green")]
    assert evaluate(detect_shapes(mask_image(mask)), single_object_metadata("circle"))[0]


def test_a_one_pixel_lump_does_not_widen_the_box():
    for shape, bump in (("square", (9, 15)), ("circle", (16, 22)), ("triangle", (22, 14))):
        mask = np.zeros((32, 32), dtype=bool)
        mask[10:22, 10:22] = shape_mask(shape, 12, 12)
        mask[bump] = True
        (found,) = detect_shapes(mask_image(mask)).detections
        assert (found.shape, found.box) == (shape, (10, 10, 22, 22))


def test_a_speck_is_a_named_shape_far_below_the_smallest_object():
    rng = np.random.default_rng(0)
    for shape in ("square", "circle", "triangle", "diamond"):
        for _ in range(5):
            speck = speck_of(red(shape, 16, 16, 8), rng, 32)
            area = int((coverage(speck, 32) >= 0.5).sum())
            assert speck.shape == shape and not speck.is_object
            assert 4 <= area <= SPECK_AREA[1] * 32, (shape, area)  # 32 px: a small triangle


def test_a_square_speck_does_not_make_two_squares_three():
    image = image_of(red("square", 8, 8, 8), red("square", 22, 22, 8), red("square", 24, 8, 3, is_object=False))
    assert evaluate(detect_shapes(image), counting_metadata("square", 2))[0]
    assert not evaluate(detect_shapes(image), counting_metadata("square", 3))[0]


def test_off_palette_cases_are_corrupted_when_asked_and_off_palette_objects_count():
    rng = np.random.default_rng(2)
    corrupted = [make_case("off-palette", index, True, rng) for index in range(12)]
    assert np.mean([not case.truth for case in corrupted]) >= 0.9
    assert {case.metadata["tag"] for case in corrupted} == set(FALSIFIED_BY_OFF_PALETTE)
    # a correct single-object case draws the named object itself off the palette: it must still be found
    correct = make_case("off-palette", 0, False, rng)
    assert correct.metadata["tag"] == "single_object" and correct.truth
    assert [d.color for d in detect_shapes(correct.image).detections] == [UNKNOWN_COLOR]
