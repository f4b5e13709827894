"""Scenes, rendering and the detector: determinism, no overlaps, exact detection, errors."""

from collections import Counter

import numpy as np
import pytest

from thinkpix.shapes import (
    ObjectSpec,
    Scene,
    ShapeObject,
    detect_shapes,
    place_objects,
    relative_position,
    render_scene,
    shape_mask,
    training_samples,
)
from thinkpix.shapes.geometry import separated
from thinkpix.shapes.scene import BACKGROUND, COLORS, SHAPES, gap_for


def test_same_seed_same_scenes_and_pixels():
    first = list(training_samples(seed=7, n=40))
    again = list(training_samples(seed=7, n=40))
    other = list(training_samples(seed=8, n=40))
    assert [s.scene for s in first] == [s.scene for s in again]
    assert all(np.array_equal(render_scene(a.scene), render_scene(b.scene)) for a, b in zip(first, again, strict=True))
    assert [s.scene for s in first] != [s.scene for s in other]


def test_no_object_overlaps_or_touches_another():
    for sample in training_samples(seed=3, n=300, image_size=32):
        scene = sample.scene
        boxes = np.array([obj.box for obj in scene.objects])
        gap = gap_for(scene.image_size)
        for i in range(len(boxes)):
            others = np.delete(boxes, i, axis=0)
            if len(others):
                assert separated(boxes[i : i + 1], others, gap)[0]
        # every object keeps all of its pixels: nothing is painted over
        painted = (render_scene(scene) != np.array(BACKGROUND)).any(-1).sum()
        assert painted == sum(shape_mask(o.shape, o.extent, o.extent).sum() for o in scene.objects)


def test_masks_fill_their_box_tightly():
    for shape in SHAPES:
        for side in (8, 12, 16, 24):
            mask = shape_mask(shape, side, side)
            assert mask.any(axis=0).all() and mask.any(axis=1).all()


@pytest.mark.parametrize("image_size", [32, 64])
def test_detector_recovers_every_object_exactly(image_size):
    for sample in training_samples(seed=11, n=150, image_size=image_size):
        image = render_scene(sample.scene)
        assert image.dtype == np.uint8 and image.shape == (image_size, image_size, 3)
        found = detect_shapes(image)
        expected = Counter((o.shape, o.color, o.size, o.box) for o in sample.scene.objects)
        assert Counter((d.shape, d.color, d.size, d.box) for d in found.detections) == expected
        assert found.stray_pixels == 0


def test_detector_tolerates_pixel_noise():
    rng = np.random.default_rng(0)
    for sample in training_samples(seed=5, n=100):
        noisy = render_scene(sample.scene) + rng.normal(0, 20, (32, 32, 3))
        found = detect_shapes(np.clip(noisy, 0, 255).astype(np.uint8))
        assert sorted(d.shape for d in found.detections) == sorted(o.shape for o in sample.scene.objects)


def test_detector_drops_specks():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[3:5, 3:5] = COLORS["red"]
    found = detect_shapes(image)
    assert found.detections == () and found.stray_pixels == 4


def test_placement_honours_a_relation():
    rng = np.random.default_rng(0)
    specs = [ObjectSpec("circle", "red", "large"), ObjectSpec("square", "blue", "large")]
    for relation in ("left of", "right of", "above", "below"):
        for _ in range(20):
            scene = place_objects(specs, rng, 32, relation=(0, relation, 1))
            assert relation in relative_position(scene.objects[0].box, scene.objects[1].box)


def test_scene_errors_name_the_field_and_allowed_values():
    obj = ShapeObject("circle", "red", "small", 1, 1, 8)
    with pytest.raises(ValueError, match=r"number of objects=0 .*allowed values: 1 to 4"):
        Scene((), 32)
    far = [ShapeObject("circle", "red", "small", x, y, 4) for x in (0, 10, 20) for y in (0, 10)]
    with pytest.raises(ValueError, match=r"number of objects=6 .*allowed values: 1 to 4"):
        Scene(tuple(far[:6]), 32)
    with pytest.raises(ValueError, match=r"number of objects=5"):
        place_objects([ObjectSpec("circle", "red")] * 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"shape='hexagon' .*allowed values: circle, square"):
        ObjectSpec("hexagon", "red")
    with pytest.raises(ValueError, match=r"color='pink' .*allowed values: red, green"):
        ObjectSpec("circle", "pink")
    with pytest.raises(ValueError, match=r"image_size=16 must be an int >= 32"):
        Scene((obj,), 16)
    with pytest.raises(ValueError, match="overlaps"):
        Scene((obj, ShapeObject("square", "blue", "small", 5, 5, 8)), 32)
    with pytest.raises(ValueError, match="square RGB uint8"):
        detect_shapes(np.zeros((32, 32, 3), dtype=np.float32))
