"""DPG-Bench scoring of Shapes-world images, following ELLA's dpg_bench/compute_dpg_bench.py.

The questions of a :class:`~thinkpix.shapes.dpg.DpgItem` are answered from the classical
detector's output instead of a VQA model (mPLUG in DPG-Bench). Then, as in
``compute_dpg_one_sample`` (TencentQQGYLab/ELLA): walking the questions in id order, a question
with a parent whose score is 0 is zeroed too; the image score is the mean over its questions; a
prompt's score is the mean over its images; the model's DPG score is the mean over prompts. The
per-category means use the raw (not zeroed) answers, as ELLA's script does (``qid2scores_orig``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from thinkpix.shapes.detect import DetectionResult, detect_shapes
from thinkpix.shapes.dpg import DPG_CATEGORIES, DpgItem, DpgQuestion
from thinkpix.shapes.geometry import relative_position

PLAIN_BACKGROUND_MAX_STRAY = 0.02
"""Largest fraction of pixels that may be neither background nor a detected object."""


@dataclass(frozen=True)
class DpgImageResult:
    """One image's answers: ``raw`` per question id, ``zeroed`` after parent-zeroing, and the score."""

    prompt: str
    score: float
    raw: dict[int, float]
    zeroed: dict[int, float]
    categories: dict[int, str]


def answer(question: DpgQuestion, detections: DetectionResult) -> float:
    """1.0 if the detections make the question's proposition true, else 0.0.

    Attribute questions look at the ``count`` most confident detections of the shape (as GenEval's
    colour check does) and need all of them to have the attribute; relations compare the most
    confident detection of each shape with GenEval's ``relative_position``.
    """
    objects = detections.by_class()
    kind, *args = question.check
    if kind == "background":
        ok = detections.stray_fraction <= PLAIN_BACKGROUND_MAX_STRAY
    elif kind == "total":
        ok = len(detections.detections) == args[0]
    elif kind == "entity":
        ok = len(objects.get(args[0], [])) >= 1
    elif kind == "count":
        ok = len(objects.get(args[0], [])) == args[1]
    elif kind in ("color", "size"):
        shape, value, count = args
        found = objects.get(shape, [])[:count]
        ok = bool(found) and all(getattr(det, kind) == value for det in found)
    elif kind == "relation":
        a, rel, b = args
        ok = a in objects and b in objects and rel in relative_position(objects[a][0].box, objects[b][0].box)
    else:
        raise ValueError(f"question check kind={kind!r} is not known")
    return float(ok)


def zero_children(item: DpgItem, raw: dict[int, float]) -> dict[int, float]:
    """DPG-Bench parent-zeroing: in id order, a question with a parent scored 0 scores 0."""
    scores = dict(raw)
    for question in item.questions:
        if any(scores[parent] == 0 for parent in question.parents):
            scores[question.id] = 0.0
    return scores


def score_answers(item: DpgItem, raw: dict[int, float]) -> DpgImageResult:
    """Parent-zero ``raw`` answers and average them into an image score."""
    zeroed = zero_children(item, raw)
    categories = {q.id: q.category for q in item.questions}
    return DpgImageResult(item.prompt, float(np.mean(list(zeroed.values()))), dict(raw), zeroed, categories)


def score_dpg_image(item: DpgItem, image: object, **detect_kwargs) -> DpgImageResult:
    """Detect the objects in ``image`` and score it against ``item``'s question graph."""
    detections = detect_shapes(image, **detect_kwargs)
    return score_answers(item, {q.id: answer(q, detections) for q in item.questions})


def summarize_dpg(results: Iterable[DpgImageResult]) -> dict[str, float]:
    """``overall``: mean over prompts of the mean over each prompt's images; plus the mean raw
    answer per L1 category over all questions and images (categories with no question omitted)."""
    per_prompt: dict[str, list[float]] = {}
    per_category: dict[str, list[float]] = {}
    for result in results:
        per_prompt.setdefault(result.prompt, []).append(result.score)
        for qid, value in result.raw.items():
            per_category.setdefault(result.categories[qid], []).append(value)
    if not per_prompt:
        raise ValueError("summarize_dpg needs at least one result")
    summary = {"overall": float(np.mean([np.mean(scores) for scores in per_prompt.values()]))}
    summary.update({c: float(np.mean(per_category[c])) for c in DPG_CATEGORIES if c in per_category})
    return summary
