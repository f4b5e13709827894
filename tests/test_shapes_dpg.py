"""DPG-style dense prompts: question graphs, parent-zeroing, scoring and summaries."""

import json

import numpy as np
import pytest

from thinkpix.shapes import DpgGroup, DpgItem, Scene, build_item, dpg_items, render_scene, score_dpg_image
from thinkpix.shapes.dpg import scene_for_item
from thinkpix.shapes.dpg_score import score_answers, summarize_dpg


def _example() -> DpgItem:
    groups = (DpgGroup("circle", 1, "red"), DpgGroup("square", 1, "blue"), DpgGroup("triangle", 2, "green"))
    return build_item(groups, relation=(0, "left of", 1))


def _qid(item: DpgItem, proposition: str) -> int:
    return next(q.id for q in item.questions if q.proposition == proposition)


def test_prompt_and_question_graph():
    item = _example()
    assert item.prompt == "a photo of a red circle left of a blue square, and two green triangles"
    entity = {q.check[1]: q.id for q in item.questions if q.category == "entity"}
    assert set(entity) == {"circle", "square", "triangle"}
    for q in item.questions:
        if q.category in ("entity", "global"):
            assert q.parents == ()
        elif q.category == "relation":
            assert q.parents == (entity["circle"], entity["square"])
        else:
            assert q.parents == (entity[q.check[1]],)
    assert {q.category for q in item.questions} == {"entity", "attribute", "relation", "other", "global"}
    assert [q.id for q in item.questions] == list(range(1, len(item.questions) + 1))


def test_parent_zeroing_on_a_hand_made_answer_sheet():
    item = _example()
    raw = {q.id: 1.0 for q in item.questions}
    raw[_qid(item, "entity - whole (circle)")] = 0.0  # the VQA says "no circle" ...
    result = score_answers(item, raw)  # ... but "yes, the circle is red" and "yes, left of the square"
    assert result.zeroed[_qid(item, "attribute - color (circle, red)")] == 0.0
    assert result.zeroed[_qid(item, "relation - spatial (circle, square, left of)")] == 0.0
    assert result.zeroed[_qid(item, "attribute - color (square, blue)")] == 1.0
    n = len(item.questions)
    assert result.score == pytest.approx((n - 3) / n)
    assert result.raw[_qid(item, "attribute - color (circle, red)")] == 1.0


def test_rendered_image_missing_an_object():
    item = _example()
    scene = scene_for_item(item, np.random.default_rng(0))
    assert score_dpg_image(item, render_scene(scene)).score == 1.0
    no_circle = Scene(tuple(o for o in scene.objects if o.shape != "circle"), scene.image_size)
    result = score_dpg_image(item, render_scene(no_circle))
    assert result.raw[_qid(item, "attribute - color (circle, red)")] == 0.0
    assert result.zeroed[_qid(item, "relation - spatial (circle, square, left of)")] == 0.0
    assert result.raw[_qid(item, "global - (objects, ==4)")] == 0.0
    assert result.raw[_qid(item, "global - (plain background)")] == 1.0


def test_summary_means_over_images_then_prompts():
    item = _example()
    n = len(item.questions)
    ones = {q.id: 1.0 for q in item.questions}
    half = {**ones, _qid(item, "global - (plain background)"): 0.0}
    other = dpg_items(1, seed=0)[0]
    results = [
        score_answers(item, ones),
        score_answers(item, half),
        score_answers(other, {q.id: 0.0 for q in other.questions}),
    ]
    summary = summarize_dpg(results)
    assert summary["overall"] == pytest.approx(((1.0 + (n - 1) / n) / 2 + 0.0) / 2)
    assert set(summary) >= {"overall", "entity", "global"}


def test_items_are_seeded_and_round_trip_through_json():
    items = dpg_items(50, seed=3)
    assert [i.prompt for i in items] == [i.prompt for i in dpg_items(50, seed=3)]
    for item in items:
        assert 3 <= sum(g.count for g in item.groups) <= 4
        assert DpgItem.from_dict(json.loads(json.dumps(item.to_dict()))) == item


def test_dpg_errors():
    with pytest.raises(ValueError, match=r"total object count=5 is out of range; allowed values: 3 to 4"):
        build_item((DpgGroup("circle", 3), DpgGroup("square", 2)))
    with pytest.raises(ValueError, match=r"count=0 is out of range"):
        DpgGroup("circle", 0)
    with pytest.raises(ValueError, match="single-object groups"):
        build_item((DpgGroup("circle", 2), DpgGroup("square", 1)), relation=(0, "above", 1))
