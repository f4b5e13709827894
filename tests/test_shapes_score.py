"""GenEval scorer: the position rule on hand-made boxes, the include/exclude rules, and measured
accuracy on 1000 ground-truth renders and 1000 corrupted pairs."""

import numpy as np
import pytest

from thinkpix.shapes import GenEvalResult, Scene, ShapeObject, evaluate, relative_position, render_scene, summarize
from thinkpix.shapes.accuracy import measure_scorer_accuracy
from thinkpix.shapes.detect import detect_shapes
from thinkpix.shapes.geometry import relation_masks
from thinkpix.shapes.prompts import colors_metadata, counting_metadata, position_metadata


@pytest.mark.parametrize(
    ("box_a", "box_b", "expected"),
    [
        ((0, 0, 10, 10), (20, 0, 30, 10), {"left of"}),  # revised dx = -18/20
        ((20, 0, 30, 10), (0, 0, 10, 10), {"right of"}),
        ((0, 0, 10, 10), (0, 20, 10, 30), {"above"}),
        ((0, 30, 10, 40), (0, 0, 10, 10), {"below"}),
        ((0, 0, 10, 10), (1, 0, 11, 10), set()),  # |offset| 1 < margin 0.1 * (10 + 10): no relation
        ((0, 0, 4, 4), (20, 20, 24, 24), {"left of", "above"}),  # diagonal: both components -0.68
        # offset (-12, -8), margin (2, 2): revised (-10, -6) / |offset| 14.42 = (-0.69, -0.42);
        # without the margin dy would be -0.55 and "above" would hold too
        ((0, 0, 10, 10), (12, 8, 22, 18), {"left of"}),
    ],
)
def test_geneval_position_rule_on_hand_made_boxes(box_a, box_b, expected):
    assert relative_position(box_a, box_b) == expected
    masks = relation_masks(np.array([box_a, box_a]), np.array(box_b))
    assert {rel for rel, hit in masks.items() if hit.all()} == expected


def _scene(*objects):
    return Scene(tuple(ShapeObject(*obj) for obj in objects), 32)


def test_counting_is_exact_through_exclude():
    three = _scene(
        ("circle", "red", "small", 1, 1, 8),
        ("circle", "blue", "small", 12, 1, 8),
        ("circle", "green", "small", 1, 12, 8),
    )
    four = _scene(
        *[(o.shape, o.color, o.size, o.x, o.y, o.extent) for o in three.objects],
        ("circle", "white", "small", 12, 12, 8),
    )
    assert evaluate(detect_shapes(render_scene(three)), counting_metadata("circle", 3))[0]
    correct, reason = evaluate(detect_shapes(render_scene(four)), counting_metadata("circle", 3))
    assert not correct and reason == "expected circle<4, found 4"
    assert not evaluate(detect_shapes(render_scene(three)), counting_metadata("circle", 4))[0]


def test_color_checks_the_most_confident_detection_only():
    image = render_scene(_scene(("square", "red", "large", 1, 1, 12), ("square", "blue", "small", 20, 20, 8)))
    # both squares are detected with IoU 1; ties go to the larger one, the red square
    assert evaluate(detect_shapes(image), colors_metadata("red", "square"))[0]
    assert not evaluate(detect_shapes(image), colors_metadata("blue", "square"))[0]


def test_position_prompt_on_a_rendered_scene():
    scene = _scene(("triangle", "red", "small", 1, 12, 8), ("circle", "blue", "small", 20, 12, 8))
    found = detect_shapes(render_scene(scene))
    assert evaluate(found, position_metadata("triangle", "left of", "circle"))[0]
    correct, reason = evaluate(found, position_metadata("triangle", "right of", "circle"))
    assert not correct and "expected triangle right of target, found left of target" in reason
    correct, reason = evaluate(found, position_metadata("square", "above", "circle"))
    assert not correct and reason == "expected square>=1, found 0"


def test_summary_is_unweighted_mean_of_tasks():
    results = [GenEvalResult("colors", "p", ok, "") for ok in (True, True, True, False)]
    results += [GenEvalResult("position", "q", False, "")]
    summary = summarize(results)
    assert summary == {"colors": 0.75, "position": 0.0, "overall": 0.375}


def test_measured_accuracy_and_rejection_at_least_99_percent():
    report = measure_scorer_accuracy(n=1000, seed=0)
    assert sum(report.gt_total.values()) == 1000 and sum(report.corrupt_total.values()) == 1000
    assert set(report.corrupt_total) == {
        "class changed",
        "object missing",
        "colour changed",
        "colours swapped",
        "relation flipped",
        "count off by one",
    }
    assert report.gt_accuracy >= 0.99
    assert report.rejection_rate >= 0.99
    assert report.dpg_gt_accuracy >= 0.99
    assert report.dpg_rejection_rate >= 0.99
