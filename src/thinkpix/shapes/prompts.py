"""GenEval-style prompts for the Shapes world, the train/held-out split, and matching scenes.

Templates follow GenEval (djghosh13/geneval, prompts/create_prompts.py): ``a photo of a circle``,
``a photo of a circle and a square``, ``a photo of three circles`` (include 3, exclude 4),
``a photo of a red circle``, ``a photo of a circle left of a square`` (include [square, circle with
position ["left of", 0]]) and ``a photo of a red circle and a blue square``.

Compositional split (fixed constants, so it is the same everywhere): a *binding* is a
(colour, shape) pair of a ``colors``/``color_attr`` prompt, a (shape, count) pair of a
``counting`` prompt, or a spatial fact of a ``position`` prompt, canonicalised so that
"A right of B" is the fact "B left of A" and "A below B" is "B above A". The bindings in
:data:`HELDOUT_COLOR_SHAPES`, :data:`HELDOUT_COUNTS` and :data:`HELDOUT_POSITIONS` never occur in
training prompts, and held-out (colour, shape) pairs are never even drawn in training images.
The evaluation set holds every prompt whose bindings are all held out; ``single_object`` and
``two_object`` prompts carry no binding, so both splits contain all of them (that keeps GenEval's
six-task overall score defined on the evaluation set).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from thinkpix.shapes.geometry import OPPOSITE, RELATIONS
from thinkpix.shapes.metadata import COUNTING_RANGE, TAGS, validate_metadata
from thinkpix.shapes.scene import (
    COLORS,
    DEFAULT_IMAGE_SIZE,
    PLURALS,
    SHAPES,
    ObjectSpec,
    Scene,
    check_choice,
    place_objects,
    random_spec,
)

NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}

HELDOUT_COLOR_SHAPES = frozenset(
    {
        ("green", "circle"),
        ("magenta", "circle"),
        ("blue", "square"),
        ("yellow", "square"),
        ("red", "triangle"),
        ("cyan", "triangle"),
        ("white", "diamond"),
        ("red", "diamond"),
    }
)
HELDOUT_COUNTS = frozenset({("circle", 3), ("square", 4), ("triangle", 2), ("diamond", 3)})
HELDOUT_POSITIONS = frozenset(
    {
        ("circle", "left of", "square"),
        ("square", "left of", "triangle"),
        ("triangle", "left of", "diamond"),
        ("diamond", "above", "circle"),
        ("triangle", "above", "square"),
        ("circle", "above", "diamond"),
    }
)
"""Canonical spatial facts (only "left of" and "above"); each covers two phrasings."""


def single_object_metadata(shape: str) -> dict:
    return validate_metadata(
        {"tag": "single_object", "include": [{"class": shape, "count": 1}], "prompt": f"a photo of a {shape}"}
    )


def two_object_metadata(first: str, second: str) -> dict:
    return validate_metadata(
        {
            "tag": "two_object",
            "include": [{"class": first, "count": 1}, {"class": second, "count": 1}],
            "prompt": f"a photo of a {first} and a {second}",
        }
    )


def counting_metadata(shape: str, count: int) -> dict:
    check_choice("shape", shape, SHAPES)
    return validate_metadata(
        {
            "tag": "counting",
            "include": [{"class": shape, "count": count}],
            "exclude": [{"class": shape, "count": count + 1}],
            "prompt": f"a photo of {NUMBER_WORDS.get(count, count)} {PLURALS[shape]}",
        }
    )


def colors_metadata(color: str, shape: str) -> dict:
    return validate_metadata(
        {
            "tag": "colors",
            "include": [{"class": shape, "count": 1, "color": color}],
            "prompt": f"a photo of a {color} {shape}",
        }
    )


def position_metadata(subject: str, relation: str, reference: str) -> dict:
    """``a photo of a {subject} {relation} a {reference}``; as in GenEval the reference is item 0."""
    return validate_metadata(
        {
            "tag": "position",
            "include": [
                {"class": reference, "count": 1},
                {"class": subject, "count": 1, "position": [relation, 0]},
            ],
            "prompt": f"a photo of a {subject} {relation} a {reference}",
        }
    )


def color_attr_metadata(color_a: str, shape_a: str, color_b: str, shape_b: str) -> dict:
    return validate_metadata(
        {
            "tag": "color_attr",
            "include": [
                {"class": shape_a, "count": 1, "color": color_a},
                {"class": shape_b, "count": 1, "color": color_b},
            ],
            "prompt": f"a photo of a {color_a} {shape_a} and a {color_b} {shape_b}",
        }
    )


def canonical_fact(subject: str, relation: str, reference: str) -> tuple[str, str, str]:
    """The same spatial fact phrased with "left of" or "above"."""
    if relation in ("right of", "below"):
        return (reference, OPPOSITE[relation], subject)
    return (subject, relation, reference)


def bindings(metadata: dict) -> frozenset[tuple]:
    """The (colour, shape), (shape, count) and canonical spatial-fact bindings a prompt states."""
    tag, include = metadata["tag"], metadata["include"]
    if tag in ("colors", "color_attr"):
        return frozenset(("color", item["color"], item["class"]) for item in include)
    if tag == "counting":
        return frozenset({("count", include[0]["class"], include[0]["count"])})
    if tag == "position":
        relation, target = include[1]["position"]
        return frozenset({("position", *canonical_fact(include[1]["class"], relation, include[target]["class"]))})
    return frozenset()


HELDOUT_BINDINGS = frozenset(
    {("color", c, s) for c, s in HELDOUT_COLOR_SHAPES}
    | {("count", s, n) for s, n in HELDOUT_COUNTS}
    | {("position", *fact) for fact in HELDOUT_POSITIONS}
)


def all_metadata() -> list[dict]:
    """Every prompt the six templates produce in this world, in a fixed order."""
    records = [single_object_metadata(s) for s in SHAPES]
    records += [two_object_metadata(a, b) for a, b in permutations(SHAPES, 2)]
    records += [counting_metadata(s, n) for s in SHAPES for n in COUNTING_RANGE]
    records += [colors_metadata(c, s) for s in SHAPES for c in COLORS]
    records += [position_metadata(a, rel, b) for a, b in permutations(SHAPES, 2) for rel in RELATIONS]
    pairs = [(c, s) for s in SHAPES for c in COLORS]
    records += [color_attr_metadata(ca, sa, cb, sb) for ca, sa in pairs for cb, sb in pairs if sa != sb and ca != cb]
    return records


def training_metadata() -> list[dict]:
    """Prompts with no held-out binding."""
    return [meta for meta in all_metadata() if not bindings(meta) & HELDOUT_BINDINGS]


def evaluation_metadata() -> list[dict]:
    """Held-out evaluation prompts: all bindings held out (plus the binding-free object prompts)."""
    return [meta for meta in all_metadata() if bindings(meta) <= HELDOUT_BINDINGS]


def training_colors(shape: str) -> tuple[str, ...]:
    """Colours a ``shape`` may be drawn in for training (held-out pairs are never drawn)."""
    return tuple(c for c in COLORS if (c, shape) not in HELDOUT_COLOR_SHAPES)


def scene_for_metadata(
    metadata: dict, rng: np.random.Generator, image_size: int = DEFAULT_IMAGE_SIZE, training: bool = False
) -> Scene:
    """A scene that satisfies ``metadata`` exactly: the included objects and nothing else.

    Colours not fixed by the prompt are random (for ``training=True`` from :func:`training_colors`),
    sizes are random, and a ``position`` item is placed so GenEval's rule holds.
    """
    validate_metadata(metadata)
    specs, first_index, relation = [], [], None
    for i, item in enumerate(metadata["include"]):
        first_index.append(len(specs))
        palette = training_colors(item["class"]) if training else tuple(COLORS)
        for _ in range(item["count"]):
            spec = random_spec(rng, item["class"], palette)
            specs.append(ObjectSpec(item["class"], item["color"], spec.size) if "color" in item else spec)
        if "position" in item:
            rel, target = item["position"]
            relation = (first_index[i], rel, first_index[target])
    return place_objects(specs, rng, image_size, relation)


@dataclass(frozen=True)
class Sample:
    """A training example: a scene, its caption and its GenEval metadata."""

    scene: Scene
    prompt: str
    metadata: dict


def training_samples(seed: int, n: int | None = None, image_size: int = DEFAULT_IMAGE_SIZE) -> Iterator[Sample]:
    """Draw ``n`` (forever if ``None``) training samples: a uniform tag, then a uniform training
    prompt of that tag, then a scene for it; fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    by_tag: dict[str, list[dict]] = {tag: [] for tag in TAGS}
    for meta in training_metadata():
        by_tag[meta["tag"]].append(meta)
    drawn = 0
    while n is None or drawn < n:
        pool = by_tag[TAGS[rng.integers(len(TAGS))]]
        meta = pool[rng.integers(len(pool))]
        scene = scene_for_metadata(meta, rng, image_size, training=True)
        yield Sample(scene, meta["prompt"], copy.deepcopy(meta))
        drawn += 1
