"""GenEval scoring of Shapes-world images.

:func:`evaluate` is a line-by-line port of ``evaluate`` in djghosh13/geneval,
evaluation/evaluate_images.py, with the detector of :mod:`thinkpix.shapes.detect` in place of
Mask2Former and the detected palette colour in place of the CLIP colour classifier:

* include items are ANDed: the ``count`` most confident detections of the class must exist
  (``>= count``); if the item has a ``color``, all of those ``count`` detections must have it; if
  it has a ``position [rel, j]``, every one of them must stand ``rel`` of every object matched by
  include item ``j`` (GenEval's ``relative_position``, see :mod:`thinkpix.shapes.geometry`);
* exclude items are ORed: ``count`` or more detections of the class make the image wrong, so a
  counting prompt for N with exclude N+1 demands exactly N;
* two departures, for a classical detector: an image with an *ambiguous* component (touching objects of one
  colour that do not split into shapes, see :mod:`thinkpix.shapes.detect`) is wrong, and among equally good
  detections (same rounded confidence and area) those of the required colour rank first, so the verdict
  never depends on the order in which objects were drawn. Objects of unknown colour count for classes and
  excludes but match no colour.

:func:`summarize` follows evaluation/summary_scores.py: per-tag accuracy over images and the
overall score as the unweighted mean of the task scores.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from thinkpix.shapes.detect import DetectionResult, detect_shapes, rank
from thinkpix.shapes.geometry import relative_position
from thinkpix.shapes.metadata import TAGS

MAX_OBJECTS_PER_CLASS = 16
"""GenEval's ``max_objects`` default: detections kept per class."""


@dataclass(frozen=True)
class GenEvalResult:
    """The verdict on one image for one metadata record."""

    tag: str
    prompt: str
    correct: bool
    reason: str


def evaluate(detections: DetectionResult, metadata: dict) -> tuple[bool, str]:
    """``(correct, reason)`` for one image's detections against one GenEval metadata record."""
    if detections.ambiguous:
        return False, f"ambiguous: {detections.ambiguous} component(s) of touching objects that do not split"
    objects = detections.by_class(MAX_OBJECTS_PER_CLASS)
    correct = True
    reason: list[str] = []
    matched_groups: list[list | None] = []
    for req in metadata.get("include", []):
        classname = req["class"]
        matched = True
        ranked = objects.get(classname, [])
        if "color" in req:  # ties (equally good detections) go to the required colour, whatever the drawing order
            ranked = sorted(ranked, key=lambda d: (rank(d)[:2], d.color != req["color"], rank(d)[2:]))
        found = ranked[: req["count"]]
        if len(found) < req["count"]:
            correct = matched = False
            reason.append(f"expected {classname}>={req['count']}, found {len(found)}")
        else:
            if "color" in req:
                colors = [det.color for det in found]
                if colors.count(req["color"]) < req["count"]:
                    correct = matched = False
                    reason.append(
                        f"expected {req['color']} {classname}>={req['count']}, found "
                        f"{colors.count(req['color'])} {req['color']}; and "
                        + ", ".join(f"{colors.count(c)} {c}" for c in sorted(set(colors)))
                    )
            if "position" in req and matched:
                expected_rel, target_group = req["position"]
                if matched_groups[target_group] is None:
                    correct = matched = False
                    reason.append(f"no target for {classname} to be {expected_rel}")
                else:
                    for obj in found:
                        for target in matched_groups[target_group]:
                            true_rels = relative_position(obj.box, target.box)
                            if expected_rel not in true_rels:
                                correct = matched = False
                                reason.append(
                                    f"expected {classname} {expected_rel} target, found "
                                    f"{' and '.join(sorted(true_rels))} target"
                                )
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        classname = req["class"]
        if len(objects.get(classname, [])) >= req["count"]:
            correct = False
            reason.append(f"expected {classname}<{req['count']}, found {len(objects[classname])}")
    return correct, "\n".join(reason)


def score_image(image: object, metadata: dict, **detect_kwargs) -> GenEvalResult:
    """Detect the objects in ``image`` and :func:`evaluate` them against ``metadata``."""
    correct, reason = evaluate(detect_shapes(image, **detect_kwargs), metadata)
    return GenEvalResult(metadata["tag"], metadata["prompt"], correct, reason)


def summarize(results: Iterable[GenEvalResult]) -> dict[str, float]:
    """Per-tag accuracy (over images) for the tags present, in GenEval's order, plus ``overall``,
    the unweighted mean of the task scores."""
    per_tag: dict[str, list[bool]] = {}
    for result in results:
        per_tag.setdefault(result.tag, []).append(result.correct)
    if not per_tag:
        raise ValueError("summarize needs at least one result")
    scores = {tag: float(np.mean(per_tag[tag])) for tag in TAGS if tag in per_tag}
    scores["overall"] = float(np.mean(list(scores.values())))
    return scores
